"""`--llm_dtype` and `--activation_checkpoint` reach the training steps of a real fine-tune (examples/finetune.py in
its own process, tiny model, 2 updates): the LLM computes in the dtype asked for while the audio path stays fp32,
and activation checkpointing recomputes the LLM's layers in backward; the run ends with a finite loss.

An observer around finetune.py records, during training: the dtype of every LLM decoder layer's input and weights
and of every audio layer's input (a global forward hook), and how often the LLM runs and how often its MLPs run.
Checkpointed layers run their MLP a second time in backward (transformers checkpoints a layer's `forward`, so
module hooks do not see the recomputation: the MLP's computation is counted by wrappers -- of transformers'
`Qwen3MLP.forward` and of `silu_mul`, which our LLM's MLPs call instead, `mlp_funasr_nano`).
"""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
from helpers import FINETUNE, REPO, finetune_args, run, tts_subset
from safetensors import safe_open

OBSERVER = """
import collections, json, os, runpy, sys

import torch
from transformers.models.qwen3 import modeling_qwen3

from funasr_nano_hf.models import mlp_funasr_nano

seen = {"llm_inputs": set(), "llm_weights": set(), "audio_inputs": set()}
calls = collections.Counter()


def record(module, args, kwargs, output):
    name = type(module).__name__
    hidden = args[0] if args else kwargs.get("hidden_states")
    if name == "FunAsrNanoEncoderLayer":  # a frozen audio path runs without autograd, in training steps too
        seen["audio_inputs"].add(str(hidden.dtype))
    if not torch.is_grad_enabled():  # evaluation / decoding
        return
    if name == "Qwen3DecoderLayer":
        seen["llm_inputs"].add(str(hidden.dtype))
        seen["llm_weights"].add(str(module.mlp.gate_proj.weight.dtype))
    elif name == "Qwen3Model":
        calls["llm"] += 1
        calls["layers"] = len(module.layers)


torch.nn.modules.module.register_module_forward_hook(record, with_kwargs=True)
def counted(function):
    def wrapper(*args, **kwargs):
        calls["mlp"] += torch.is_grad_enabled()
        return function(*args, **kwargs)

    return wrapper


modeling_qwen3.Qwen3MLP.forward = counted(modeling_qwen3.Qwen3MLP.forward)
mlp_funasr_nano.silu_mul = counted(mlp_funasr_nano.silu_mul)
sys.argv = ["finetune.py", *json.loads(os.environ["FINETUNE_ARGS"])]
try:
    runpy.run_path(os.environ["FINETUNE"], run_name="__main__")
finally:
    report = {key: sorted(value) for key, value in seen.items()} | {"calls": dict(calls)}
    with open(os.environ["OBSERVED"], "w") as handle:
        json.dump(report, handle)
"""


def _observed_finetune(model_dir, shared_dir, tmp_path, *options: str) -> tuple[dict, dict]:
    data = tts_subset(shared_dir, tmp_path / "data", train=4)
    out = tmp_path / "out"
    common = "--max_steps 2 --batch_size 2 --num_workers 0 --save_strategy no --log_interval 1 --warmup_steps 1"
    args = finetune_args(model_dir, data, out, *common.split(), "--lr", "1e-3", *options)[1:]
    observer = tmp_path / "observer.py"
    observer.write_text(OBSERVER)
    env = {
        "FINETUNE": str(FINETUNE),
        "FINETUNE_ARGS": json.dumps(args),
        "OBSERVED": str(tmp_path / "observed.json"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    run([sys.executable, str(observer)], env=env)
    observed = json.loads((tmp_path / "observed.json").read_text())
    results = json.loads((out / "all_results.json").read_text())
    with safe_open(str(out / "final" / "adapter_model.safetensors"), "pt") as adapter:
        observed["adapter_dtypes"] = sorted({str(adapter.get_tensor(k).dtype) for k in adapter.keys()})
    return observed, results


@pytest.mark.parametrize(
    "options, llm_dtype, recomputed",
    [
        (("--llm_dtype", "bf16"), "torch.bfloat16", False),
        (("--llm_dtype", "fp16"), "torch.float16", False),
        (("--activation_checkpoint", "true"), "torch.float32", True),
    ],
    ids=["llm_dtype-bf16", "llm_dtype-fp16", "activation_checkpoint"],
)
def test_option_reaches_the_training_steps(tiny_original_dir, shared_dir, tmp_path, options, llm_dtype, recomputed):
    observed, results = _observed_finetune(tiny_original_dir, shared_dir, tmp_path, *options)
    # the LLM computes in llm_dtype, its weights are in it; the audio encoder and adaptor stay fp32
    assert observed["llm_inputs"] == [llm_dtype] and observed["llm_weights"] == [llm_dtype]
    assert observed["audio_inputs"] == ["torch.float32"]
    # LoRA's own weights stay fp32 (peft), so AdamW updates them in fp32 whatever the LLM's dtype
    assert observed["adapter_dtypes"] == ["torch.float32"]
    # 2 updates x 1 micro-batch = 2 LLM passes; with checkpointing each layer's MLP runs again in backward
    calls = observed["calls"]
    assert calls["llm"] == 2
    assert calls["mlp"] == calls["llm"] * calls["layers"] * (2 if recomputed else 1)
    assert math.isfinite(results["train_loss"]) and results["train_loss"] > 0
