"""`funasr-nano-hf transcribe`: files and manifests, JSONL out, CER summary, long-output flags."""

from __future__ import annotations

import json

import numpy as np

from funasr_nano_hf.cli.main import main as cli_main
from funasr_nano_hf.inference import repeated_span, transcribe, transcribe_detailed


def test_files_and_manifest_to_jsonl_with_cer(tiny_original_dir, tiny_model, shared_dir, tmp_path, capsys):
    wav = str(shared_dir / "data" / "real" / "sample.wav")
    manifest = str(shared_dir / "data" / "real" / "real.jsonl")
    out = tmp_path / "out.jsonl"
    assert (
        cli_main(
            [
                "transcribe",
                "--model",
                str(tiny_original_dir),
                "--batch-size",
                "2",
                "--max-new-tokens",
                "8",
                "--output",
                str(out),
                wav,
                manifest,
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["key"] for r in rows] == ["sample", json.loads(open(manifest).readline())["key"]]
    assert rows[1]["reference"] == json.loads(open(manifest).readline())["txt"] and rows[0]["duration"] == 6.0
    model, processor = tiny_model
    assert rows[0]["text"] == transcribe(model, processor, wav, max_new_tokens=8)[0]  # batched == one by one
    assert rows[0]["hit_limit"] is True  # the tiny random model never says <|im_end|> within 8 tokens
    assert "CER" in capsys.readouterr().err


def test_repetition_and_limit_flags(tiny_model):
    assert repeated_span([5, 1, 2, 1, 2, 1, 2, 1, 2]) and repeated_span([7] * 4)
    assert not repeated_span([1, 2, 3, 4, 5, 6, 7, 8, 9]) and not repeated_span([1, 1, 1])
    model, processor = tiny_model
    silence = np.zeros(16000 * 2, dtype=np.float32)
    result = transcribe_detailed(model, processor, [silence], max_new_tokens=30)[0]
    assert result["hit_limit"] and result["duration"] == 2.0
