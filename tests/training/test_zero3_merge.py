"""`--merge_lora` under DeepSpeed ZeRO-3 (2 processes, `accelerate launch`, LoRA matrices large enough to be
partitioned) writes the same merged model as merging the run's saved adapter without DeepSpeed: the merge is
rebuilt from the saved files, not from the partitioned training model. The same run caches the frozen audio path
with each rank embedding its own shard (`frozen_cache.add_audio_embeddings_sharded`) and finishes."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, finetune_args
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str]) -> str:
    key = hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions" / f"funasr_nano_hf-{key}"))
    proc = subprocess.Popen(
        [str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT}s (a hang?)\n{output[-6000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{output[-8000:]}"
    return output


def test_merge_lora_under_zero3_equals_merge_without_deepspeed(tiny_original_dir, data_dir, tmp_path):
    from peft import PeftModel

    from funasr_nano_hf import load_pretrained

    out = tmp_path / "zero3"
    launch = [
        Path(sys.executable).parent / "accelerate",
        "launch",
        "--config_file",
        REPO / "examples" / "accelerate" / "deepspeed_zero3.yaml",
        "--num_processes",
        "2",
        "--main_process_port",
        _free_port(),
    ]
    run = (
        "--max_steps 2 --batch_size 4 --batch_type example --lora_r 32 --lora_alpha 64 --lora_dropout 0 --lr 5e-3 "
        "--warmup_steps 1 --num_workers 0 --save_strategy no --merge_lora true --cache_frozen_audio true "
        "--ddp_backend gloo --seed 7"
    )
    output = _run([*launch, *finetune_args(tiny_original_dir, data_dir, out, *run.split(), valid=False)])
    assert "caching frozen audio embeddings" in output

    merged = load_file(str(out / "final_merged" / "model.safetensors"))
    base, _ = load_pretrained(tiny_original_dir)
    reference = PeftModel.from_pretrained(base, str(out / "final")).merge_and_unload().state_dict()
    assert merged.keys() <= reference.keys()
    for name, tensor in merged.items():
        assert tensor.shape == reference[name].shape, name  # whole tensors, not ZeRO-3 shards
        assert torch.equal(tensor, reference[name].to(tensor.dtype)), name
    # the adapter trained (lora_B starts at 0), so the merged projections differ from the base model's
    untouched, _ = load_pretrained(tiny_original_dir)
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q_proj], untouched.state_dict()[q_proj])
