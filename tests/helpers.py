"""Test helpers shared by the test folders: where the test data is, clip subsets, and running finetune.py.

The tests read the shared data folder beside the repo (`../shared`, or `$FUNASR_NANO_HF_SHARED`). A fresh clone
without it still runs: `fallback_shared_dir` builds a folder of the same layout from the bundled clips in
`examples/bundled/data` (decoded to 16 kHz WAV, all four manifest formats), so only the figures differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINETUNE = REPO / "examples" / "finetune.py"
BUNDLED_DATA = REPO / "examples" / "bundled" / "data"
# Prepended to a subprocess script: every import of funasr fails, as on a machine without the optional extra.
BLOCK_FUNASR = """
import importlib.abc, sys

class _NoFunasr(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "funasr" or name.startswith("funasr."):
            raise ImportError(f"funasr is not installed (blocked by the test): {name}")
        return None

sys.meta_path.insert(0, _NoFunasr())
"""


# ---------------------------------------------------------------------------------------------------------
# test data
# ---------------------------------------------------------------------------------------------------------
def shared_path() -> Path:
    """The shared data folder as configured (it may not exist: see `fallback_shared_dir`)."""
    return Path(os.environ.get("FUNASR_NANO_HF_SHARED", REPO.parent / "shared"))


def fallback_shared_dir(dest: Path, train: int = 240, valid: int = 40) -> Path:
    """A stand-in for the shared folder built from the bundled clips: `data/tts/` (train from the bundled
    fine-tuning set, valid from the held-out set) in the four formats, and `data/real/` (three clips)."""
    import numpy as np
    import soundfile as sf

    from funasr_nano_hf.data.audio import load_audio
    from funasr_nano_hf.models import prompting

    tts = dest / "data" / "tts"
    for split, manifest, count in (("train", "train.jsonl", train), ("valid", "heldout.jsonl", valid)):
        rows = [json.loads(line) for line in (BUNDLED_DATA / manifest).read_text(encoding="utf-8").splitlines()]
        # the shared set's order: valid starts en, zh, ...; train starts zh, ...
        zh, en = [r for r in rows if r["key"].endswith("_zh")], [r for r in rows if r["key"].endswith("_en")]
        first, second = (en, zh) if split == "valid" else (zh, en)
        rows = [row for pair in zip(first, second) for row in pair][:count]
        (tts / "wav" / split).mkdir(parents=True, exist_ok=True)
        plain, chatml, source_target, scp, text = [], [], [], [], []
        for index, row in enumerate(rows):
            language = "zh" if row["key"].endswith("_zh") else "en"
            key = f"tts_{split}_{index:04d}_{language}"
            wav = f"wav/{split}/{key}.wav"
            waveform, _ = load_audio(str(BUNDLED_DATA / row["wav"]))
            sf.write(tts / wav, waveform, 16000, subtype="PCM_16")
            frames = int((len(waveform) / 16 - 25) // 10 + 1)
            instruction = prompting.instruction() if language == "zh" else "Speech transcription:"
            plain.append({"key": key, "wav": wav, "txt": row["txt"]})
            chatml.append(
                {
                    "key": key,
                    "messages": [
                        {"role": "system", "content": prompting.DEFAULT_SYSTEM_PROMPT},
                        {"role": "user", "content": instruction + prompting.speech_span(wav)},
                        {"role": "assistant", "content": row["txt"]},
                    ],
                    "speech_length": frames,
                    "text_length": len(row["txt"]),
                }
            )
            source_target.append(
                {"key": key, "source": wav, "target": row["txt"], "source_len": frames, "target_len": len(row["txt"])}
            )
            scp.append(f"{key} {wav}")
            text.append(f"{key} {row['txt']}")
        for name, lines in (
            (f"{split}.jsonl", plain),
            (f"{split}_chatml.jsonl", chatml),
            (f"{split}_source_target.jsonl", source_target),
        ):
            (tts / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
        (tts / f"{split}_wav.scp").write_text("".join(line + "\n" for line in scp), encoding="utf-8")
        (tts / f"{split}_text.txt").write_text("".join(line + "\n" for line in text), encoding="utf-8")
    # data/real: three recordings of different lengths; sample.wav is 6.0 s like the shared one (clips joined)
    real = dest / "data" / "real"
    real.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (BUNDLED_DATA / "pretrain_domain.jsonl").read_text().splitlines()]
    waveforms = [load_audio(str(BUNDLED_DATA / row["wav"]))[0] for row in rows[:8]]
    sample = np.concatenate(waveforms)[: 6 * 16000]
    assert len(sample) == 6 * 16000, "the bundled clips are too short to build a 6 s sample"
    sf.write(real / "sample.wav", sample, 16000, subtype="PCM_16")
    sf.write(real / "asr_example.wav", waveforms[0], 16000, subtype="PCM_16")
    sf.write(real / "mid.wav", np.concatenate(waveforms[1:3]), 16000, subtype="PCM_16")
    transcript = " ".join(row["txt"] for row in rows[:1])
    (real / "real.jsonl").write_text(
        json.dumps({"key": "fun_asr_sample", "wav": "asr_example.wav", "txt": transcript}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    return dest


def tts_subset(shared_dir: Path, dest: Path, train: int, valid: int = 0) -> Path:
    """The first `train` / `valid` clips of the shared TTS set as `dest/{train,valid}.jsonl` (audio linked)."""
    tts = shared_dir / "data" / "tts"
    dest.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.jsonl", train), ("valid.jsonl", valid)):
        if count:
            lines = (tts / name).read_text(encoding="utf-8").splitlines(True)[:count]
            (dest / name).write_text("".join(lines), encoding="utf-8")
    (dest / "wav").symlink_to(tts / "wav")
    return dest


# ---------------------------------------------------------------------------------------------------------
# examples/finetune.py in a real process
# ---------------------------------------------------------------------------------------------------------
def finetune_args(model_dir: Path, data_dir: Path, out: Path, *extra: str, valid: bool = True) -> list[str]:
    """`examples/finetune.py` and its arguments on `data_dir/{train,valid}.jsonl` (valid if present and
    `valid`) into `out`; `extra` comes last, so it overrides (argparse keeps the last value)."""
    has_valid = valid and (data_dir / "valid.jsonl").is_file()
    return [
        str(a)
        for a in (
            FINETUNE,
            "--model_dir",
            model_dir,
            "--train_data",
            data_dir / "train.jsonl",
            *(("--valid_data", data_dir / "valid.jsonl") if has_valid else ()),
            "--output_dir",
            out,
            *extra,
        )
    ]


def finetune_cmd(model_dir: Path, data_dir: Path, out: Path, *extra: str, valid: bool = True) -> list[str]:
    """`finetune_args` run by this interpreter."""
    return [sys.executable, *finetune_args(model_dir, data_dir, out, *extra, valid=valid)]


def run(cmd: list[str], *, env: dict[str, str] | None = None, returncode: int = 0, timeout: int = 900) -> str:
    """Run `cmd`; its exit status must be `returncode` (e.g. -9: killed). Returns stdout + stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == returncode, f"exit {result.returncode} (expected {returncode})\n{output[-8000:]}"
    return output


class RunsCode:
    """Pickles into a call of os.system (touching `marker`): what a hostile checkpoint or adapter file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def padded_training_batch(processor, shared_dir: Path, count: int = 3) -> dict:
    """A collated training batch of `count` shared clips of different lengths (so it is padded and masked)."""
    import glob

    import soundfile as sf

    from funasr_nano_hf.data.collator import FunAsrNanoCollator
    from funasr_nano_hf.models import prompting

    wavs = sorted(glob.glob(str(shared_dir / "data" / "tts" / "wav" / "valid" / "*.wav")))[:count]
    texts = ["我想问我在滨海新区有房", "hello world", "今天天气很好我们去公园散步吧"]
    examples = [
        processor.build_training_example(sf.read(path, dtype="float32")[0], text, prompting.instruction())
        for path, text in zip(wavs, texts)
    ]
    batch = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)(examples)
    assert not batch["attention_mask"].all(), "a padded batch"
    return batch


def loss_grads_and_saved_bytes(model, batch: dict) -> tuple:
    """One training forward + backward (dropout seeded): the loss, every gradient, and the bytes autograd kept
    for backward outside the model's parameters (each storage once)."""
    import torch

    model.zero_grad(set_to_none=True)
    saved: dict[int, int] = {}

    def pack(tensor):
        saved.setdefault(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        return tensor

    torch.manual_seed(0)  # the same dropout masks in every run
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, sum(n for ptr, n in saved.items() if ptr not in params)


def assert_same_step_with_less_kept(lean: tuple, stock: tuple, rtol: float, atol: float) -> None:
    """Two `loss_grads_and_saved_bytes` results of the same step: the loss bit-identical, every gradient equal to
    (rtol, atol), and `lean` keeping fewer bytes for backward than `stock`."""
    import torch

    assert torch.equal(lean[0], stock[0])
    assert lean[1].keys() == stock[1].keys() and lean[1]
    for name in lean[1]:
        torch.testing.assert_close(lean[1][name], stock[1][name], rtol=rtol, atol=atol, msg=name)
    assert lean[2] < stock[2], f"saved for backward: {lean[2]} B, without the change {stock[2]} B"
