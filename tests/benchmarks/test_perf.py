"""benchmarks/perf.py's measuring tools count what they claim: the matmul ceiling finds every product of a step
with its shapes (mm, addmm via nn.Linear, bmm) and counts their FLOPs exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from perf import matmul_ceiling  # noqa: E402


def test_matmul_ceiling_counts_each_product_of_the_step_at_its_shape():
    linear = torch.nn.Linear(96, 80)  # addmm [B*T, 96] x [96, 80]
    a, b = torch.randn(48, 64), torch.randn(64, 32)
    left, right = torch.randn(3, 16, 24), torch.randn(3, 24, 40)

    def step() -> None:
        for _ in range(2):
            a @ b
        linear(torch.randn(5, 7, 96))
        torch.bmm(left, right)
        torch.relu(a)  # not a product: not counted

    result = matmul_ceiling(step)
    expected = 2 * (2 * 48 * 64 * 32) + 2 * 35 * 96 * 80 + 2 * 3 * 16 * 24 * 40
    assert result["matmul_gflop"] == pytest.approx(expected / 1e9, rel=1e-12)
    assert 0 < result["matmul_alone_seconds"] < 1
