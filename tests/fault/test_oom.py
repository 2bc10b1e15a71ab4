"""Out of memory on an oversized batch, in a real fine-tuning process: 8 one-minute utterances in one batch,
with the address space capped (RLIMIT_AS, set by the fault hook at the first step's start) at what the
process already uses + 2 MiB -- a device far too small for that batch (its first tensor alone is 18 MB).
The allocator's own error comes out as a TrainingOutOfMemoryError that names the batch and the options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from finetune_runs import finetune_cmd, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_data(fault_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("long_data")
    first = json.loads((fault_data / "train.jsonl").read_text().splitlines()[0])
    audio, rate = sf.read(str(fault_data / first["wav"]), dtype="int16")
    minute = np.tile(audio, 60 * rate // len(audio) + 1)[: 60 * rate]
    rows = []
    for i in range(8):
        sf.write(str(folder / f"long{i}.wav"), minute, rate, subtype="PCM_16")
        rows.append({"key": f"long_{i}", "wav": f"long{i}.wav", "txt": first["txt"]})
    (folder / "train.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return folder


def test_oversized_batch_gives_a_clear_error(tiny_original_dir, long_data, tmp_path):
    cmd = finetune_cmd(
        tiny_original_dir,
        long_data,
        tmp_path / "out",
        "--max_epoch",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--max_source_length",
        "7000",
    )
    output = run(cmd, fault="step_begin:1:memory_cap=2", returncode=1)
    assert (
        "TrainingOutOfMemoryError: out of memory (cpu) in training step 1 on a batch of 8 examples padded "
        "to 1000 audio frames and "
    ) in output, output[-4000:]
    for knob in (
        "--batch_size (now 8 examples)",
        "--batch_type token",
        "--max_source_length",
        "--activation_checkpoint true",
        "'long_0'",
    ):
        assert knob in output
    # chained to the allocator's own error, which stays visible
    assert "The above exception was the direct cause of the following exception" in output
    assert "can't allocate memory" in output or "MemoryError" in output
