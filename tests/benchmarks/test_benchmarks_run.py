"""The performance benchmarks run from a clean checkout and print their tables (tiny architecture: seconds, not
the real-size figures of the README, which come from uncontended runs of the same scripts)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--size", "tiny", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_train_step_prints_funasr_ours_and_the_ratios():
    out = _run("train_step.py", "--steps", "1")
    for variant in ("funasr", "ours", "ours_cached"):
        assert re.search(rf"^{variant}\s+\d+\.\d+", out, re.M), out
    assert "fp32 matmul peak measured in the same run" in out and "ratios (steps/s)" in out
    loss_gap = float(re.search(r"\|ours - funasr\| = (\S+);", out).group(1))
    assert loss_gap < 1e-5, out  # same weights, same batch: FunASR's loss


def test_decode_tokens_are_identical_to_funasr_at_every_batch_size():
    out = _run("decode.py", "--clips", "3", "--batches", "1,3", "--max-new-tokens", "4")
    rows = re.findall(r"^ours batch (\d+) .* (\d+)/(\d+)$", out, re.M)
    assert [r[0] for r in rows] == ["1", "3"], out
    assert all(same == total for _, same, total in rows), out


def test_growth_curves_print_both_tables_and_draw_the_png(tmp_path):
    png = tmp_path / "curves.png"
    args = ["--batches", "1,2", "--clip-seconds", "2", "--decode-batches", "1,2", "--decode-clips", "2"]
    out = _run("growth_curves.py", *args, "--max-new-tokens", "2", "--steps", "1", "--png", str(png))
    assert "seconds per step per audio-second" in out and "greedy decode" in out
    assert png.stat().st_size > 10_000
