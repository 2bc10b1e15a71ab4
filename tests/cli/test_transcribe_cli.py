"""`funasr-nano-hf transcribe`: files and manifests, JSONL out, CER summary, long-output flags."""

from __future__ import annotations

import json

import numpy as np

from funasr_nano_hf.cli.main import main as cli_main
from funasr_nano_hf.inference import repeated_span, transcribe, transcribe_detailed


def test_files_and_manifest_to_jsonl_with_cer(tiny_original_dir, tiny_model, shared_dir, tmp_path, capsys):
    wav = str(shared_dir / "data" / "real" / "sample.wav")
    manifest = str(shared_dir / "data" / "real" / "real.jsonl")
    out = tmp_path / "out.jsonl"
    assert (
        cli_main(
            [
                "transcribe",
                "--model",
                str(tiny_original_dir),
                "--batch-size",
                "2",
                "--max-new-tokens",
                "8",
                "--output",
                str(out),
                wav,
                manifest,
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["key"] for r in rows] == ["sample", json.loads(open(manifest).readline())["key"]]
    assert rows[1]["reference"] == json.loads(open(manifest).readline())["txt"] and rows[0]["duration"] == 6.0
    model, processor = tiny_model
    assert rows[0]["text"] == transcribe(model, processor, wav, max_new_tokens=8)[0]  # batched == one by one
    assert rows[0]["hit_limit"] is True  # the tiny random model never says <|im_end|> within 8 tokens
    assert "CER" in capsys.readouterr().err


def test_repetition_and_limit_flags(tiny_model):
    assert repeated_span([5, 1, 2, 1, 2, 1, 2, 1, 2]) and repeated_span([7] * 4)
    assert not repeated_span([1, 2, 3, 4, 5, 6, 7, 8, 9]) and not repeated_span([1, 1, 1])
    model, processor = tiny_model
    silence = np.zeros(16000 * 2, dtype=np.float32)
    result = transcribe_detailed(model, processor, [silence], max_new_tokens=30)[0]
    assert result["hit_limit"] and result["duration"] == 2.0


# ---- devices, dtypes, adapters ------------------------------------------------------------------------------
def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_bf16_on_cpu_runs_with_the_audio_path_in_fp32(tiny_original_dir, sample_wav, tmp_path):
    import torch

    from funasr_nano_hf.inference import load_for_inference

    model, _ = load_for_inference(tiny_original_dir, device="cpu", dtype="bf16")
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.model.audio_tower.parameters()} == {torch.float32}
    assert {p.dtype for p in model.model.multi_modal_projector.parameters()} == {torch.float32}
    out = tmp_path / "bf16.jsonl"
    argv = ["transcribe", "--model", str(tiny_original_dir), "--device", "cpu", "--dtype", "bf16"]
    assert cli_main([*argv, "--max-new-tokens", "4", "--output", str(out), str(sample_wav)]) == 0
    (row,) = _rows(out)
    assert row["key"] == "sample" and isinstance(row["text"], str) and row["text"]


def test_unknown_device_is_refused(tiny_original_dir, sample_wav):
    import pytest

    from funasr_nano_hf.inference import resolve_device

    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(RuntimeError):
        cli_main(["transcribe", "--model", str(tiny_original_dir), "--device", "tpu9", str(sample_wav)])


def test_adapter_is_merged_for_decoding(tiny_model, tiny_original_dir, shared_dir, tmp_path):
    """A LoRA adapter given to `load_for_inference` is merged (plain model, changed weights) and decodes as the
    unmerged peft model does."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.inference import load_for_inference

    base, processor = load_pretrained(tiny_original_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged, _ = load_for_inference(tiny_original_dir, adapter=tmp_path / "adapter", device="cpu")
    assert not isinstance(merged, PeftModel) and not any("lora" in name for name, _ in merged.named_parameters())
    reference, _ = tiny_model
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], reference.state_dict()[name])
    clips = sorted((shared_dir / "data" / "tts" / "wav" / "valid").glob("*.wav"))[:2]
    unmerged = PeftModel.from_pretrained(load_pretrained(tiny_original_dir)[0], tmp_path / "adapter").eval()
    assert transcribe(merged, processor, [str(c) for c in clips], max_new_tokens=6) == transcribe(
        unmerged, processor, [str(c) for c in clips], max_new_tokens=6
    )


# ---- many inputs: bad ones reported, the rest transcribed; directories; nothing to do ----------------------
def test_one_bad_file_among_many(tiny_original_dir, tiny_model, shared_dir, tmp_path, capsys):
    clips = sorted((shared_dir / "data" / "tts" / "wav" / "valid").glob("*.wav"))[:2]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file")
    missing = tmp_path / "missing.wav"
    out = tmp_path / "out.jsonl"
    inputs = [str(clips[0]), str(corrupt), str(missing), str(clips[1])]
    argv = ["transcribe", "--model", str(tiny_original_dir), "--max-new-tokens", "4", "--output", str(out)]
    assert cli_main([*argv, *inputs]) == 1
    rows = _rows(out)
    assert [r["key"] for r in rows] == [clips[0].stem, "corrupt", "missing", clips[1].stem]
    assert "corrupt.wav" in rows[1]["error"] and "missing" in rows[2]["error"]
    model, processor = tiny_model
    assert [rows[0]["text"], rows[3]["text"]] == transcribe(model, processor, [str(c) for c in clips], max_new_tokens=4)
    err = capsys.readouterr().err
    assert "corrupt.wav" in err and "missing.wav" in err and "2 inputs not transcribed" in err


def test_directory_input_is_searched_recursively_in_sorted_order(tiny_original_dir, shared_dir, tmp_path):
    import shutil

    clips = sorted((shared_dir / "data" / "tts" / "wav" / "valid").glob("*.wav"))[:3]
    folder = tmp_path / "audio"
    (folder / "b" / "deeper").mkdir(parents=True)
    shutil.copy(clips[0], folder / "z.wav")
    shutil.copy(clips[1], folder / "b" / "deeper" / "a.wav")
    shutil.copy(clips[2], folder / "b" / "c.wav")
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "out.jsonl"
    argv = ["transcribe", "--model", str(tiny_original_dir), "--max-new-tokens", "2", "--output", str(out)]
    assert cli_main([*argv, str(folder)]) == 0
    assert [r["key"] for r in _rows(out)] == ["b/c", "b/deeper/a", "z"]


def test_nothing_to_transcribe_exits_with_what_was_expected(tiny_original_dir, tmp_path):
    import pytest

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="nothing to transcribe.*expected audio files") as exit_info:
        cli_main(["transcribe", "--model", str(tiny_original_dir), str(tmp_path / "empty")])
    assert exit_info.value.code != 0


# ---- long recordings --------------------------------------------------------------------------------------
def test_long_file_gets_segment_timestamps_and_no_segment_refuses(tiny_original_dir, shared_dir, tmp_path):
    import soundfile as sf

    from funasr_nano_hf.inference.segmentation import max_samples

    clips = sorted((shared_dir / "data" / "tts" / "wav" / "valid").glob("*.wav"))[:3]
    pause = np.zeros(16000, np.float32)
    recording = np.concatenate([x for c in clips for x in (pause, sf.read(str(c), dtype="float32")[0])] + [pause])
    sf.write(tmp_path / "long.wav", recording, 16000)
    out = tmp_path / "out.jsonl"
    argv = ["transcribe", "--model", str(tiny_original_dir), "--max-new-tokens", "3", "--output", str(out)]
    assert cli_main([*argv, "--max-segment-s", "4", str(tmp_path / "long.wav")]) == 0
    (row,) = _rows(out)
    assert len(row["segments"]) == 3 and all(s["end"] > s["start"] for s in row["segments"])
    assert row["duration"] == round(len(recording) / 16000, 3)
    # over the encoder's position table with segmentation off: an error row naming the file and the limit
    from funasr_nano_hf import load_pretrained

    model, processor = load_pretrained(tiny_original_dir)
    limit = max_samples(model.config, processor.feature_extractor)
    noise = np.random.default_rng(0).normal(0, 0.05, limit + 16000).astype(np.float32)  # not silence: audible
    sf.write(tmp_path / "too_long.wav", noise, 16000)
    assert cli_main([*argv, "--no-segment", str(tmp_path / "too_long.wav")]) == 1
    (row,) = _rows(out)
    assert "too_long.wav" in row["error"] and "limit" in row["error"] and "text" not in row


# ---- the command answers --help without loading torch -----------------------------------------------------
def test_help_loads_neither_torch_nor_transformers():
    import os
    import shutil
    import subprocess
    import sys

    import pytest

    from funasr_nano_hf.cli.main import DTYPE_NAMES, build_parser
    from funasr_nano_hf.models.configuration_funasr_nano import DTYPES

    assert sorted(DTYPE_NAMES) == sorted(DTYPES)
    script = shutil.which("funasr-nano-hf") or os.path.join(os.path.dirname(sys.executable), "funasr-nano-hf")
    commands = build_parser()._subparsers._group_actions[0].choices
    for argv in [["--help"], *([name, "--help"] for name in commands)]:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", script, *argv], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "usage: funasr-nano-hf" in result.stdout
        imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
        if {"torch", "transformers"} & imported:
            pytest.fail(f"funasr-nano-hf {' '.join(argv)} imported {sorted({'torch', 'transformers'} & imported)}")
