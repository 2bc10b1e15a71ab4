"""A full disk while a checkpoint is saved (ENOSPC injected by funasr_nano_hf.testing.faults at the `save`
point, where every file is written to the staging folder): a named error, the complete checkpoints intact, a
clean exit."""

from __future__ import annotations

import pytest
from finetune_runs import finetune_cmd, run

from funasr_nano_hf.training.checkpointing import checkpoint_problem, vet_checkpoint
from funasr_nano_hf.training.output_dir import LOCK_NAME


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_save(tiny_original_dir, fault_data, tmp_path):
    out = tmp_path / "out"
    output = run(finetune_cmd(tiny_original_dir, fault_data, out), fault="save:3:enospc", returncode=1)
    expected = (
        f"no space left on device while writing {out / 'checkpoint-3'}; checkpoints up to checkpoint-2 are intact"
    )
    assert f"finetune.py: error: {expected}" in output
    assert "Traceback" not in output.split("finetune.py: error:")[-1]
    assert expected in (out / "train.log").read_text()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    for step in (1, 2):
        assert checkpoint_problem(out / f"checkpoint-{step}") is None
        vet_checkpoint(out / f"checkpoint-{step}")
    assert not list(out.glob(".tmp-*")), "the partial checkpoint was left behind"
    assert not (out / LOCK_NAME).exists(), "the lock outlived the run"
