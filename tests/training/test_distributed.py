"""Multi-process fine-tuning on CPU with examples/finetune.py, each launched the way a user would:

* DeepSpeed ZeRO-2, 2 processes (`accelerate launch --use_deepspeed --deepspeed_config_file zero2.json`):
  train, then `--resume` from a mid-epoch checkpoint reproduces the uninterrupted run step for step.
* DeepSpeed ZeRO-3, 2 processes (`accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml`):
  the same resume, and the final adapter, gathered from the shards, loads with `PeftModel.from_pretrained`
  on `load_pretrained`'s base model and reproduces the run's eval loss.
* DeepSpeed through `--deepspeed CONFIG` (the `deepspeed` launcher): the config's "auto" values come from
  the guide options (batch_size, accum_grad, grad_clip).
* DDP, 2 processes x batch B (`accelerate launch --config_file examples/accelerate/ddp.yaml`) against
  1 process x batch 2B, on clips of equal label-token counts: the same losses and gradient norms.

CPU specifics: `DS_ACCELERATOR=cpu`, no GPU visible, `--use_cpu true` for DDP, `--ddp_backend gloo` for DeepSpeed
under accelerate (without a backend accelerate sees one process per rank on a CPU machine; finetune.py stops
with a hint then). The first DeepSpeed run on a machine compiles a small CPU op (~1 min).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, finetune_args

BIN = Path(sys.executable).parent
ZERO2_JSON = str(REPO / "examples" / "deepspeed" / "zero2.json")
TIMEOUT = 420  # seconds per launched run; a healthy 2-process run takes ~50 s on 2 cores

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",  # CPU only, even on a GPU machine
        "OMP_NUM_THREADS": "1",  # 2 processes on 2 cores
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # DeepSpeed JIT-builds its CPU comm op under TORCH_EXTENSIONS_DIR; two virtualenvs sharing the default
    # folder rebuild it (~1 min) every time the other one ran, so keep one folder per interpreter.
    key = hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions" / f"funasr_nano_hf-{key}"))
    return env


def _run(cmd: list[str], timeout: int = TIMEOUT) -> str:
    """Run `cmd` from the repo root (in its own process group, killed whole on timeout); its stdout+stderr."""
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its worker processes
        stdout, stderr = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, cmd))}\n{stdout[-3000:]}\n{stderr[-6000:]}")
    assert proc.returncode == 0, (
        f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n--- stdout ---\n{stdout[-3000:]}\n"
        f"--- stderr ---\n{stderr[-6000:]}"
    )
    return stdout + stderr


def _finetune(model_dir, data_dir, out, *extra, valid: bool = True) -> list[str]:
    """finetune.py with small settings; `extra` comes last, so it overrides (argparse keeps the last value)."""
    small = (
        "--batch_type example --log_interval 1 --warmup_steps 1 --lr 5e-3 --lora_dropout 0 --early_stopping_patience 0 "
        "--dataloader_num_workers 0 --seed 7 --log_level info"
    ).split()
    if valid:
        # 6 valid examples = 2 ranks x 3: no rank pads its last eval batch with repeats, so eval_loss is exact.
        small += "--per_device_eval_batch_size 3 --eval_max_new_tokens 4".split()
    return finetune_args(model_dir, data_dir, out, *small, *extra, valid=valid)


def _accelerate(*launch_args) -> list[str]:
    return [str(BIN / "accelerate"), "launch", *launch_args, "--main_process_port", str(_free_port())]


def _state(out: Path, step: int) -> dict:
    return json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())


def _train_logs(state: dict) -> list[tuple[int, float, float]]:
    return [(h["step"], h["loss"], h["grad_norm"]) for h in state["log_history"] if "loss" in h]


def _ds_model_states(out: Path, step: int) -> dict:
    """What DeepSpeed itself saved with the checkpoint: the config it ran with, its world and step count."""
    files = sorted((out / f"checkpoint-{step}" / f"global_step{step}").glob("*model_states.pt"))
    assert files, f"no DeepSpeed checkpoint in {out / f'checkpoint-{step}'}"
    return torch.load(files[0], map_location="cpu", weights_only=False)


def _assert_deepspeed_checkpoint(
    out: Path, step: int, *, stage: int, micro: int, accum: int, world: int, clip: float = 5.0
) -> None:
    folder = out / f"checkpoint-{step}" / f"global_step{step}"
    for rank in range(world):  # ZeRO shards the optimizer state over the ranks
        assert (folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file(), sorted(folder.iterdir())
    state = _ds_model_states(out, step)
    config = state["ds_config"]
    assert config["zero_optimization"]["stage"] == stage
    assert state["dp_world_size"] == world
    assert state["global_steps"] == step  # one DeepSpeed step per optimizer step, not per micro-batch
    # "auto" filled from the finetune.py options (grad_clip: the guide's default 5)
    assert (
        config["train_micro_batch_size_per_gpu"],
        config["gradient_accumulation_steps"],
        config["train_batch_size"],
        config["gradient_clipping"],
    ) == (micro, accum, micro * accum * world, clip)


def _assert_two_ranks(out: Path, step: int, log: str, per_device: int, total: int) -> None:
    """Two processes trained one run: the Trainer's own batch arithmetic, and a RNG state saved per rank."""
    assert f"Instantaneous batch size per device = {per_device}" in log, log[-3000:]
    assert f"Total train batch size (w. parallel, distributed & accumulation) = {total}" in log, log[-3000:]
    assert {p.name for p in (out / f"checkpoint-{step}").glob("rng_state*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }


def _logged_loss_steps(train_log: Path) -> list[int]:
    """Steps of the training-loss lines of train.log (one line per log event, world main process only)."""
    return [int(line.split(" | ")[1].split()[1]) for line in train_log.read_text().splitlines() if " | loss " in line]


def _resume_from(out: Path, step: int, log: str = "train.log") -> None:
    """Leave `out` as if the run had been stopped right after saving checkpoint-`step`."""
    for checkpoint in out.glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)
    for name in ("final", "model_avg"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / log).rename(out / f"{log}.first")


def _assert_resume_reproduces(out: Path, first: dict, resume_step: int, last_step: int) -> None:
    resumed = _state(out, last_step)
    assert resumed["global_step"] == last_step
    # The resumed run trained only the steps after the checkpoint ...
    assert _logged_loss_steps(out / "train.log") == list(range(resume_step + 1, last_step + 1))
    # ... and its history continues the checkpoint's: steps 1..resume_step carried over, then the new ones.
    old, new = _train_logs(first), _train_logs(resumed)
    assert [s for s, _, _ in new] == list(range(1, last_step + 1))
    assert new[:resume_step] == old[:resume_step]
    # Restored weights, optimizer shards, LR schedule, sampler position and RNG: the same numbers as the
    # uninterrupted run (CPU kernels with a fixed thread count are deterministic; observed bitwise equal).
    for (step, loss, grad), (_, loss_ref, grad_ref) in zip(new[resume_step:], old[resume_step:]):
        assert (loss, grad) == pytest.approx((loss_ref, grad_ref), rel=1e-5), f"step {step}"


def _train_kill_resume(cmd: list[str], out: Path, *, every: int, last: int, stage: int, micro: int, accum: int) -> None:
    """Run `cmd` (2 ranks, a checkpoint every `every` steps) to step `last`; then keep only checkpoint-`every`,
    resume, and require the same log history and weights from there on."""
    log = _run(cmd)
    _assert_two_ranks(out, every, log, per_device=micro, total=8)
    _assert_deepspeed_checkpoint(out, every, stage=stage, micro=micro, accum=accum, world=2)
    first = _state(out, last)
    assert _logged_loss_steps(out / "train.log") == list(range(1, last + 1))
    _resume_from(out, every)
    _run([*cmd, "--resume", "true"])
    _assert_resume_reproduces(out, first, resume_step=every, last_step=last)


# ---------------------------------------------------------------------------------------------------------
# DeepSpeed
# ---------------------------------------------------------------------------------------------------------
def test_zero2_two_processes_train_and_resume(tiny_original_dir, data_dir, tmp_path):
    """48 examples, 2 ranks x batch 2 x accum_grad 2 = 8 per step: 6 steps per epoch, 2 epochs. A checkpoint
    every 4 steps; resuming from checkpoint-4 (mid-epoch 0) must reproduce steps 5..12 (across an epoch)."""
    out = tmp_path / "zero2"
    launch = _accelerate(
        "--use_deepspeed",
        "--deepspeed_config_file",
        ZERO2_JSON,
        *"--num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no".split(),
    )
    run = "--max_epoch 2 --batch_size 2 --accum_grad 2 --validate_interval 4 --save_checkpoint_interval 4"
    cmd = [*launch, *_finetune(tiny_original_dir, data_dir, out, *run.split(), "--ddp_backend", "gloo")]
    _train_kill_resume(cmd, out, every=4, last=12, stage=2, micro=2, accum=2)
    _assert_deepspeed_checkpoint(out, 12, stage=2, micro=2, accum=2, world=2)
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_zero3_two_processes_resume_and_save_a_loadable_adapter(tiny_original_dir, data_dir, tmp_path):
    """ZeRO-3 partitions the parameters over the ranks (lora_r 32 makes every LoRA matrix larger than the
    config's persistence threshold, so the adapter itself is partitioned and must be gathered to be saved)."""
    from peft import PeftModel

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.data.collator import FunAsrNanoCollator
    from funasr_nano_hf.data.featurize import DataConfig, build_dataset

    out = tmp_path / "zero3"
    launch = _accelerate(
        "--config_file", REPO / "examples" / "accelerate" / "deepspeed_zero3.yaml", "--num_processes", "2"
    )
    run = "--max_epoch 1 --batch_size 4 --lora_r 32 --lora_alpha 64 --validate_interval 3 --save_checkpoint_interval 3"
    cmd = [*launch, *_finetune(tiny_original_dir, data_dir, out, *run.split(), "--ddp_backend", "gloo")]
    _train_kill_resume(cmd, out, every=3, last=6, stage=3, micro=4, accum=1)

    # final/ is the model the run evaluated last (all_results.json): reload it outside DeepSpeed.
    base, processor = load_pretrained(tiny_original_dir)
    model = PeftModel.from_pretrained(base, str(out / "final")).eval()
    lora = {name: p for name, p in model.named_parameters() if ".lora_" in name}
    assert lora and all(".language_model." in name for name in lora)
    assert all(p.shape[0] == 32 or p.shape[1] == 32 for p in lora.values())  # whole matrices, not shards
    assert all(p.abs().sum() > 0 for name, p in lora.items() if ".lora_B." in name)  # trained (init is 0)
    zero = _ds_model_states(out, 6)["ds_config"]["zero_optimization"]
    assert all(p.numel() > zero["stage3_param_persistence_threshold"] for p in lora.values())
    trainable = sum(p.numel() for p in lora.values())
    for rank in range(2):  # each rank's fp32 master copy holds a shard of the adapter, not all of it
        optim = out / "checkpoint-6" / "global_step6" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        shard = torch.load(optim, map_location="cpu", weights_only=False)["optimizer_state_dict"]["fp32_flat_groups"]
        assert trainable // 2 <= sum(t.numel() for t in shard) < trainable
    valid, _ = build_dataset([str(data_dir / "valid.jsonl")], processor, DataConfig())
    collate = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    with torch.no_grad():  # each rank's eval batch of 3: its per-token mean (FunASR's), the batches averaged
        losses = [model(**collate([valid[i] for i in rows])).loss.item() for rows in ([0, 1, 2], [3, 4, 5])]
    metrics = json.loads((out / "all_results.json").read_text())
    # Same weights; only the reduction order differs.
    assert sum(losses) / 2 == pytest.approx(metrics["eval_loss"], rel=1e-4)


def test_deepspeed_flag_takes_auto_values_from_guide_options(tiny_original_dir, data_dir, tmp_path):
    """`--deepspeed CONFIG` (here with the `deepspeed` launcher, 1 process): TrainingArguments fills "auto"
    while it is built, before batch_size/accum_grad/grad_clip are mapped onto it; finetune.py refills them."""
    out = tmp_path / "flag"
    _run(
        [
            BIN / "deepspeed",
            "--num_gpus",
            "1",
            "--master_port",
            str(_free_port()),
            *_finetune(
                tiny_original_dir,
                data_dir,
                out,
                "--deepspeed",
                ZERO2_JSON,
                *"--batch_size 4 --accum_grad 2 --grad_clip 2.5 --max_steps 2 --save_checkpoint_interval 2".split(),
                valid=False,
            ),
        ]
    )
    _assert_deepspeed_checkpoint(out, 2, stage=2, micro=4, accum=2, world=1, clip=2.5)


# ---------------------------------------------------------------------------------------------------------
# DDP
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def equal_token_data(tiny_original_dir, shared_dir, tmp_path_factory) -> Path:
    """48 train / 6 valid rows of the shared TTS set whose transcripts all have the same number of label tokens
    (text + <|im_end|>) within each split; train repeats clips under new keys to reach 48."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_original_dir / "Qwen3-0.6B"))
    tts = shared_dir / "data" / "tts"
    dest = tmp_path_factory.mktemp("equal_tokens")
    for split, count in (("train", 48), ("valid", 6)):
        rows = [json.loads(line) for line in (tts / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        by_count: dict[int, list[dict]] = {}
        for row in rows:
            by_count.setdefault(len(tokenizer.encode(row["txt"] + "<|im_end|>")), []).append(row)
        group = max(by_count.values(), key=len)
        chosen = [{**group[i % len(group)], "key": f"{group[i % len(group)]['key']}_{i}"} for i in range(count)]
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in chosen)
        (dest / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    (dest / "wav").symlink_to(tts / "wav")
    return dest


def test_ddp_two_processes_match_one_process(tiny_original_dir, equal_token_data, tmp_path):
    """2 processes x batch 4 against 1 process x batch 8, same seed, `--batch_type example`.

    The sampler shuffles with (seed, epoch), cuts the order into per-device batches and deals them to the
    ranks: step k is global batches 2k and 2k+1 on 2 ranks of 4, i.e. exactly the 8 examples of the 1-process
    run's batch k (same permutation, same step order). Each rank's loss is its batch's per-token mean (FunASR's
    normalisation) and DDP averages the gradients; every clip here has the same number of label tokens
    (`equal_token_data`), so the mean of the two ranks' means is the mean over the 8 clips and both runs compute
    the same numbers up to float summation order: rtol 1e-4 leaves room for that to grow over the updates,
    while other examples in a step are off by ~1e-3 or more. (How batches of different token counts weigh:
    tests/training/test_funasr_training_parity.py.)
    """
    two, one = tmp_path / "two", tmp_path / "one"
    common = ("--max_epoch", "1", "--validate_interval", "3", "--save_checkpoint_interval", "3", "--use_cpu", "true")
    log = _run(
        [
            *_accelerate("--config_file", REPO / "examples" / "accelerate" / "ddp.yaml", "--num_processes", "2"),
            *_finetune(tiny_original_dir, equal_token_data, two, "--batch_size", "4", *common),
        ]
    )
    _assert_two_ranks(two, 6, log, per_device=4, total=8)
    # eval_loss: 2 ranks x 3 eval clips against 1 process x 6 (equal label-token counts: the same mean).
    log = _run(
        [
            sys.executable,
            *_finetune(
                tiny_original_dir,
                equal_token_data,
                one,
                "--batch_size",
                "8",
                *common,
                "--per_device_eval_batch_size",
                "6",
            ),
        ]
    )
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in log
    assert (one / "checkpoint-6" / "rng_state.pth").is_file()

    ddp, single = _state(two, 6), _state(one, 6)
    assert _logged_loss_steps(two / "train.log") == list(range(1, 7))  # one run, logged once (rank 0)
    assert [s for s, _, _ in _train_logs(ddp)] == [s for s, _, _ in _train_logs(single)] == list(range(1, 7))
    for (step, loss, grad), (_, loss_1, grad_1) in zip(_train_logs(ddp), _train_logs(single)):
        assert (loss, grad) == pytest.approx((loss_1, grad_1), rel=1e-4), f"step {step}"
    evals = lambda state: [(h["step"], h["eval_loss"]) for h in state["log_history"] if "eval_loss" in h]  # noqa: E731
    assert [s for s, _ in evals(ddp)] == [s for s, _ in evals(single)] == [3, 6]
    for (step, a), (_, b) in zip(evals(ddp), evals(single)):
        assert a == pytest.approx(b, rel=1e-4), f"eval at step {step}"
