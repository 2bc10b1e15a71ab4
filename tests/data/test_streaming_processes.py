"""`--streaming` in real processes: 2 ranks (torchrun) x 2 loader workers read every example exactly once per epoch;
a streaming fine-tune killed with SIGKILL and resumed with `--resume` ends with the uninterrupted run's weights
and losses, bit for bit (the stream skips the consumed batches; 2 loader workers, so the resumed worker order
rotates)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import finetune_cmd, run, tts_subset
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

READER = textwrap.dedent(
    """
    import json, os, sys
    from torch.utils.data import DataLoader
    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.data.featurize import DataConfig
    from funasr_nano_hf.data.streaming import StreamingBatches

    def keys(batch):
        return [example["key"] for example in batch]

    model_dir, out, *shards = sys.argv[1:]
    _, processor = load_pretrained(model_dir)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    stream = StreamingBatches(shards, processor, DataConfig(), batch_size=2500, sort_size=4, seed=1, rank=rank,
                              world_size=world, epochs=1)
    seen = [key for batch in DataLoader(stream, batch_size=None, collate_fn=keys, num_workers=2) for key in batch]
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(seen, f)
    """
)


def test_two_ranks_two_workers_read_every_example_once(tiny_original_dir, shared_dir, tmp_path):
    data = tts_subset(shared_dir, tmp_path / "data", train=12)
    rows = (data / "train.jsonl").read_text(encoding="utf-8").splitlines()
    shards = []
    for n in range(3):  # 3 shards for 4 readers: the split is by example, not by shard
        shards.append(data / f"part-{n}.jsonl")
        shards[-1].write_text("\n".join(rows[n::3]) + "\n", encoding="utf-8")
    script = tmp_path / "reader.py"
    script.write_text(READER)
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0", script,
         tiny_original_dir, tmp_path, *shards], env=env, timeout=600)  # fmt: skip
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(per_rank) and not set(per_rank[0]) & set(per_rank[1])
    seen = Counter(key for keys in per_rank for key in keys)
    assert set(seen) == {json.loads(row)["key"] for row in rows} and set(seen.values()) == {1}


STREAM_RUN = (
    "--streaming true --max_steps 5 --per_device_train_batch_size 1200 --sort_size 4 --save_checkpoint_interval 1 "
    "--log_interval 1 --warmup_steps 1 --lr 5e-3 --lora_r 16 --use_cpu --seed 7 --num_workers 2 "
    "--disable_tqdm true --early_stopping_patience 0 --keep_nbest_models 10"
).split()


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "adapter_model.safetensors"))


def _losses(out: Path) -> list[tuple[int, float]]:
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def test_streaming_kill_and_resume_reproduces_the_uninterrupted_run(tiny_original_dir, shared_dir, tmp_path):
    data = tts_subset(shared_dir, tmp_path / "data", train=8)
    env = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    whole = tmp_path / "whole"
    run(finetune_cmd(tiny_original_dir, data, whole, *STREAM_RUN, valid=False), env=env)
    killed = tmp_path / "killed"
    cmd = finetune_cmd(tiny_original_dir, data, killed, *STREAM_RUN, valid=False)
    run(cmd, env={**env, "FUNASR_NANO_HF_FAULT": "step:4"}, returncode=-9)
    assert max(int(p.name.split("-")[1]) for p in killed.glob("checkpoint-*")) == 3
    log = run([*cmd, "--resume", "true"], env=env)
    assert f"resuming from {killed / 'checkpoint-3'}" in log
    assert _losses(killed) == _losses(whole) and len(_losses(whole)) == 5
    reference, resumed = _adapter(whole), _adapter(killed)
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name
