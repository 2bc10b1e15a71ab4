"""load_pretrained on both layouts; hub model ids from huggingface_hub's cache (offline); convert CLI; Auto classes;
clear errors for bad folders/files and failed downloads."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from helpers import finetune_cmd, run, tts_subset

import funasr_nano_hf
from funasr_nano_hf import CheckpointError, load_pretrained
from funasr_nano_hf.cli.main import main as cli_main
from funasr_nano_hf.conversion import detect_layout
from funasr_nano_hf.conversion.loading import resolve_model_dir
from funasr_nano_hf.inference import generate_ids


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def converted_dir(tiny_original_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "hf"
    assert cli_main(["convert", str(tiny_original_dir), str(out)]) == 0
    return out


def test_detects_both_layouts(tiny_original_dir, converted_dir, tmp_path):
    assert detect_layout(tiny_original_dir) == "original"
    assert detect_layout(converted_dir) == "hf"
    with pytest.raises(CheckpointError, match="neither an original"):
        detect_layout(tmp_path)


def test_converted_folder_transcribes_identically(tiny_model, converted_dir, sample_wav):
    model, processor = tiny_model
    hf_model, hf_processor = load_pretrained(converted_dir)
    waveform, _ = sf.read(str(sample_wav), dtype="float32")
    assert (
        generate_ids(hf_model, hf_processor, [waveform], max_new_tokens=16).tolist()
        == generate_ids(model, processor, [waveform], max_new_tokens=16).tolist()
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, hf_model.state_dict()[key]), key
    # The CTC stand-in tensors have no place in the HF model: kept beside it, bit-identical.
    assert sorted(hf_model.funasr_extra_state) == ["ctc.ctc_lo.bias", "ctc.ctc_lo.weight", "ctc_decoder.linear1.weight"]
    for key, value in model.funasr_extra_state.items():
        assert torch.equal(value, hf_model.funasr_extra_state[key])
    assert hf_model.config.funasr_config["model"] == "FunASRNano"


def test_auto_classes_load_after_import(converted_dir):
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    model = AutoModelForSpeechSeq2Seq.from_pretrained(str(converted_dir))
    processor = AutoProcessor.from_pretrained(str(converted_dir))
    assert isinstance(model, funasr_nano_hf.FunAsrNanoHfForConditionalGeneration)
    assert isinstance(processor, funasr_nano_hf.FunAsrNanoHfProcessor)
    assert processor.audio_token_rule == "low_frame_rate"
    assert isinstance(processor.feature_extractor, funasr_nano_hf.FunAsrNanoHfFeatureExtractor)


def test_stock_transformers_refuses_loudly(converted_dir):
    """Without our import the folder must not load with stock transformers' (wrong) audio-token rule."""
    code = (
        "import sys\n"
        "from transformers import AutoModelForSpeechSeq2Seq\n"
        f"AutoModelForSpeechSeq2Seq.from_pretrained({str(converted_dir)!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "funasr_nano_hf" in result.stderr


def test_convert_console_script(tiny_original_dir, tmp_path):
    exe = shutil.which("funasr-nano-hf") or os.path.join(os.path.dirname(sys.executable), "funasr-nano-hf")
    result = subprocess.run(
        [exe, "convert", str(tiny_original_dir), str(tmp_path / "out"), "--dtype", "bf16"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    model, _ = load_pretrained(tmp_path / "out")
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.audio_tower.layers[0].self_attn.q_proj.weight.dtype == torch.float32


# ---- broken inputs: each error names the file (and key/shape for weights) ----------------------------


def test_missing_model_pt(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path / "m")
    (folder / "model.pt").unlink()
    with pytest.raises(CheckpointError, match="neither an original"):
        load_pretrained(folder)


def test_truncated_model_pt(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path / "m")
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt: truncated or corrupt"):
        load_pretrained(folder)


def test_hostile_pickle_refused(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path / "m")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Evil()}, folder / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt: refused"):
        load_pretrained(folder)
    assert not marker.exists()


def test_shape_mismatch_names_key_and_shapes(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path / "m")
    conf = yaml.safe_load((folder / "config.yaml").read_text())
    conf["audio_encoder_conf"]["linear_units"] = 32
    (folder / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True))
    message = (
        r"model\.pt: tensor for 'model\.audio_tower\.layers\.0\.mlp\.fc1\.weight' "
        r"has shape \(64, 32\), the config gives \(32, 32\)"
    )
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(folder)


def test_missing_tensor_named(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path / "m")
    state = torch.load(folder / "model.pt", weights_only=True)["state_dict"]
    del state["audio_adaptor.linear1.bias"]
    torch.save({"state_dict": state}, folder / "model.pt")
    with pytest.raises(CheckpointError, match=r"1 tensors missing.*multi_modal_projector\.linear_1\.bias"):
        load_pretrained(folder)


def test_corrupt_config_yaml(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path / "m")
    (folder / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match=r"config\.yaml: unreadable YAML"):
        load_pretrained(folder)


def test_unsupported_config_refused(tiny_original_dir, tmp_path):
    folder = _copy(tiny_original_dir, tmp_path / "m")
    conf = yaml.safe_load((folder / "config.yaml").read_text())
    conf["audio_adaptor_conf"]["downsample_rate"] = 2
    (folder / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True))
    with pytest.raises(CheckpointError, match="downsample_rate != 1 is not supported"):
        load_pretrained(folder)


def test_corrupt_safetensors_named(converted_dir, tmp_path):
    folder = _copy(converted_dir, tmp_path / "h")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=str(folder)):
        load_pretrained(folder)


def test_lm_head_value_wins_when_it_differs(tiny_original_dir, tmp_path, caplog):
    folder = _copy(tiny_original_dir, tmp_path / "m")
    state = torch.load(folder / "model.pt", weights_only=True)["state_dict"]
    state["llm.lm_head.weight"] = state["llm.lm_head.weight"] + 1
    torch.save({"state_dict": state}, folder / "model.pt")
    model, _ = load_pretrained(folder)
    assert torch.equal(model.lm_head.weight, state["llm.lm_head.weight"].float())
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert "differs from the embeddings" in caplog.text


# ---- hub model ids: huggingface_hub's cache, offline -------------------------------------------------------

ORIGINAL_ID = "FunAudioLLM/Fun-ASR-Nano-2512"
CONVERTED_ID = "funasr-nano-hf-test/Fun-ASR-Nano-2512-hf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_snapshot(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """`folder` stored as huggingface_hub stores a downloaded model: ``models--Org--Name/`` (its
    `repo_folder_name`) with the files as content-named ``blobs/``, ``snapshots/<commit>/`` of relative
    symlinks to them, and ``refs/<ref>`` holding the commit (no newline, as huggingface_hub writes it)."""
    from huggingface_hub.file_download import repo_folder_name

    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = storage / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub_cache(tiny_original_dir, converted_dir, tmp_path_factory) -> Path:
    """A Hugging Face cache holding the tiny model under FunASR's id (original layout) and a converted id."""
    from huggingface_hub import scan_cache_dir

    cache = tmp_path_factory.mktemp("hf_cache")
    cache_snapshot(cache, ORIGINAL_ID, tiny_original_dir)
    cache_snapshot(cache, CONVERTED_ID, converted_dir)
    # huggingface_hub's own cache scanner reads it as two cached model repositories with a main ref
    scanned = {repo.repo_id: repo for repo in scan_cache_dir(cache).repos}
    assert set(scanned) == {ORIGINAL_ID, CONVERTED_ID}
    assert all({ref for rev in repo.revisions for ref in rev.refs} == {"main"} for repo in scanned.values())
    return cache


def test_hub_ids_load_from_the_cache_offline(hub_cache, tiny_model, tmp_path):
    """In a fresh process with HF_HUB_CACHE set and HF_HUB_OFFLINE=1: both layouts load by id, bit-identical to
    the local folder; a missing id fails naming what to download where."""
    code = f"""
import torch
from funasr_nano_hf import CheckpointError, load_pretrained
from funasr_nano_hf.conversion.loading import resolve_model_dir
for name, repo in (("original", {ORIGINAL_ID!r}), ("converted", {CONVERTED_ID!r})):
    model, processor = load_pretrained(repo)
    torch.save(model.state_dict(), {str(tmp_path)!r} + f"/{{name}}.pt")
    print(name, resolve_model_dir(repo))
print("by commit", resolve_model_dir({ORIGINAL_ID!r}, revision={COMMIT!r}))
try:
    load_pretrained("FunAudioLLM/No-Such-Model")
except CheckpointError as err:
    print("ERROR", err)
"""
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    expected = tiny_model[0].state_dict()
    for name in ("original", "converted"):
        state = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert set(state) == set(expected)
        for key, value in expected.items():
            assert torch.equal(state[key], value), (name, key)
    snapshot = f"{hub_cache}/models--FunAudioLLM--Fun-ASR-Nano-2512/snapshots/{COMMIT}"
    assert f"original {snapshot}" in result.stdout and f"by commit {snapshot}" in result.stdout
    error = result.stdout.split("ERROR ", 1)[1]
    for part in (
        "FunAudioLLM/No-Such-Model: no such local folder, not in the Hugging Face cache",
        str(hub_cache),
        "HF_HUB_OFFLINE=1 forbids downloading it",
        "`hf download FunAudioLLM/No-Such-Model`",
        "models--FunAudioLLM--No-Such-Model",
        "--local-dir DIR",
    ):
        assert part in error, error


def test_unknown_revision_offline_names_it(hub_cache):
    with pytest.raises(CheckpointError, match=r"not in the Hugging Face cache .* at revision v9"):
        resolve_model_dir(ORIGINAL_ID, revision="v9", cache_dir=hub_cache)


def test_paths_that_are_neither_folders_nor_ids(tmp_path, tiny_original_dir):
    assert resolve_model_dir(tiny_original_dir) == tiny_original_dir
    with pytest.raises(
        CheckpointError, match=r"no such folder \(expected a FunASR model folder, an HF folder, or a hub"
    ):
        resolve_model_dir(tmp_path / "missing" / "model")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="file: not a directory"):
        load_pretrained(tmp_path / "file")
    with pytest.raises(CheckpointError, match=r"hub 'github': not a known hub; use one of \['hf', 'ms'\]"):
        resolve_model_dir(ORIGINAL_ID, hub="github")


def test_modelscope_without_its_package_says_so(monkeypatch):
    """hub='ms' needs the optional modelscope package (what FunASR downloads with); without it, a clear error."""
    for name in ["modelscope", *(m for m in sys.modules if m.startswith("modelscope."))]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: import raises ImportError
    with pytest.raises(CheckpointError, match=r"modelscope package, which is not installed \(pip install modelscope"):
        resolve_model_dir(ORIGINAL_ID, hub="ms")


@pytest.mark.slow
def test_finetune_model_dir_takes_a_hub_id(hub_cache, shared_dir, tmp_path):
    data = tts_subset(shared_dir, tmp_path / "data", train=8)
    out = tmp_path / "out"
    cmd = finetune_cmd(
        ORIGINAL_ID,
        data,
        out,
        "--max_steps",
        "1",
        "--use_cpu",
        "true",
        "--num_workers",
        "0",
        "--early_stopping_patience",
        "0",
    )
    run(cmd, env={"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"})
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["model_dir"] == ORIGINAL_ID
