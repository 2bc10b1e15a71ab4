"""Shared measuring tools of the benchmarks: a matmul peak measured in the run, the FLOPs of a LoRA step counted
from the model's shapes and the batch, peak RSS, and clips of a chosen length made from the shared TTS data.

FLOP count (multiply-add = 2 FLOPs; every nn.Linear of a module at the rows it sees, plus attention's two
[T x T] products per layer). A LoRA step: the frozen audio path forward only (no weight is trained, its input
needs no gradient; nothing when cached), the LLM forward + the input-gradient backward (2x forward; frozen
weights get no weight gradient; LoRA's own matmuls are included in the Linear count), `lm_head` at the
positions it runs on (labelled positions since the labelled-logits change; every position before), fwd + bwd.
"""

from __future__ import annotations

import csv
import resource
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tts"
RATE = 16000


def pin_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """glibc only: pin malloc's mmap threshold (as ``MALLOC_MMAP_THRESHOLD_=131072`` does). glibc otherwise raises
    it to the largest block freed, and the heap keeps freed activations: pinned, a real-size LoRA step peaks ~0.5
    GB lower, but every large tensor is a fresh mapping whose pages fault in, which measured 30-50 % slower steps."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def peak_rss_gb() -> float:
    """This process's peak resident set since start or the last `start_peak_rss` (Linux VmHWM; ru_maxrss else)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024**2
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def start_peak_rss() -> None:
    """Start a new peak-RSS phase: free what Python and glibc hold but no longer use (so a setup phase's freed
    memory is not counted in the next), then reset the kernel's high-water mark (Linux >= 4.0: clear_refs 5)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except (OSError, AttributeError):
        pass


def _best_seconds(call, repeats: int) -> float:
    """The fastest of `repeats` timed calls of `call`, after one untimed warm-up call."""
    call()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The best of `repeats` [n x n] @ [n x n] products, in GFLOP/s, with this process's torch threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / _best_seconds(lambda: a @ b, repeats) / 1e9


def _mm_shapes(name: str, shapes: list) -> tuple[int, int, int, int] | None:
    """(batch, M, K, N) of a profiled aten::mm / addmm / bmm call from its recorded input shapes."""
    if name == "aten::mm" and len(shapes) >= 2 and len(shapes[0]) == 2:
        (m, k), (_, n) = shapes[0], shapes[1]
        return 1, m, k, n
    if name == "aten::addmm" and len(shapes) >= 3 and len(shapes[1]) == 2:
        (m, k), (_, n) = shapes[1], shapes[2]
        return 1, m, k, n
    if name == "aten::bmm" and len(shapes) >= 2 and len(shapes[0]) == 3:
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return b, m, k, n
    return None


def _best_product_seconds(b: int, m: int, k: int, n: int, repeats: int = 5) -> float:
    """The fastest of `repeats` products of these shapes alone, best of the two layouts a step uses for the right
    operand (contiguous [K, N], or the transposed view of a contiguous [N, K] weight, as nn.Linear passes it)."""
    left = torch.randn(b, m, k).squeeze(0)
    layouts = (torch.randn(b, k, n).squeeze(0), torch.randn(b, n, k).squeeze(0).transpose(-1, -2))
    return min(_best_seconds(lambda right=right: torch.matmul(left, right), repeats) for right in layouts)


def matmul_ceiling(step) -> dict[str, float]:
    """The step's own matrix products timed alone: one profiled call of `step` records every aten::mm / addmm /
    bmm with its shapes; each distinct shape is then run alone (best of 5, best layout) as many times as the step
    called it. Their FLOPs over that time is what these products reach on this machine with nothing else around
    them -- the most a step made of them could reach, whatever the code between them (attention kernels and
    element-wise ops are left out, i.e. counted as free)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    flops = seconds = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        dims = _mm_shapes(event.key, event.input_shapes)
        if dims is None or 0 in dims:
            continue
        b, m, k, n = dims
        flops += 2 * b * m * k * n * event.count
        seconds += _best_product_seconds(b, m, k, n) * event.count
    return {"matmul_gflop": flops / 1e9, "matmul_alone_seconds": seconds}


def _linear_macs_per_row(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def lora_step_flops(model: nn.Module, batch: dict[str, torch.Tensor], cached: bool, labelled_logits: bool) -> float:
    """The FLOPs of one LoRA training step on `batch` (see the module docstring for what is counted)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.model
    input_ids = batch["input_ids"]
    rows, tokens = input_ids.shape
    flops = 0.0
    if not cached:
        frames = batch["input_features"].shape[0] * batch["input_features"].shape[1]
        encoder, adaptor = inner.audio_tower, inner.multi_modal_projector
        flops += 2 * frames * (_linear_macs_per_row(encoder) + _linear_macs_per_row(adaptor))
        length = batch["input_features"].shape[1]
        enc_cfg = base.config.audio_config
        width = getattr(enc_cfg, "hidden_size", None) or getattr(enc_cfg, "output_size", 0)
        layers = enc_cfg.num_hidden_layers
        flops += 4 * rows * length**2 * width * layers
    llm = inner.language_model
    text = base.config.text_config
    attention = 4 * rows * tokens**2 * text.num_attention_heads * text.head_dim * text.num_hidden_layers
    flops += 2 * (2 * rows * tokens * _linear_macs_per_row(llm) + attention)
    labels = batch["labels"]
    positions = int((labels[:, 1:] != -100).sum()) if labelled_logits else rows * tokens
    flops += 2 * 2 * positions * base.lm_head.in_features * base.lm_head.out_features
    return flops


def shared_clips() -> list[dict]:
    """The shared TTS train clips (key, wav path, transcript, duration), in file order."""
    rows = list(csv.DictReader(open(SHARED / "train_meta.tsv", encoding="utf-8"), delimiter="\t"))
    return [
        {"key": r["key"], "wav": str(SHARED / "wav" / "train" / f"{r['key']}.wav"), "txt": r["txt"],
         "duration": float(r["duration_s"])}
        for r in rows
    ]  # fmt: skip


def clip_of_length(seconds: float, start: int, pool: list[dict]) -> tuple[np.ndarray, str]:
    """A clip of ~`seconds` made by joining shared clips (from index `start`) with their transcripts, cut to length
    (the transcript then covers slightly more than the audio: fine for timing, not for accuracy)."""
    pieces, texts, total, index = [], [], 0, start
    while total < seconds * RATE:
        clip = pool[index % len(pool)]
        wave, _ = sf.read(clip["wav"], dtype="float32")
        pieces.append(wave)
        texts.append(clip["txt"])
        total += len(wave)
        index += 1
    return np.concatenate(pieces)[: int(seconds * RATE)], "".join(texts)


def write_clips(folder: Path, seconds: list[float]) -> list[dict]:
    """Clips of the given lengths as wav files in `folder`, as manifest rows (key, wav, txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    pool = shared_clips()
    rows = []
    for i, length in enumerate(seconds):
        wave, text = clip_of_length(length, 7 * i, pool)
        path = folder / f"clip{i:03d}_{length:.1f}s.wav"
        sf.write(str(path), wave, RATE)
        rows.append({"key": path.stem, "wav": str(path), "txt": text})
    return rows
