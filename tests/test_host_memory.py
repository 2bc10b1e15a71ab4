"""glibc keeps the blocks freed tensors leave unless its mmap threshold is pinned (`host_memory`): measured in a
fresh process each way, on the pattern a training step has (MiB-sized activations freed while small tensors live)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PATTERN = """
import sys, torch
from funasr_nano_hf.host_memory import pin_mmap_threshold
def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
if sys.argv[1] == "pinned":
    assert pin_mmap_threshold()
first = torch.empty(4 * 2**20); del first  # one 16 MiB block freed: glibc raises its threshold to 16 MiB
base = rss_mb()
big, small = [], []
for _ in range(40):
    big.append(torch.ones(2 * 2**20))  # 8 MiB activations ...
    small.append(torch.ones(1000))  # ... between longer-lived small tensors
del big
print(round(rss_mb() - base))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_pinned_threshold_returns_freed_activations_to_the_kernel():
    kept = {
        mode: int(
            subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, check=True).stdout
        )
        for mode in ("default", "pinned")
    }
    assert kept["default"] > 200, kept  # 320 MiB freed but still resident
    assert kept["pinned"] < 20, kept
