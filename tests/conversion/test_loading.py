"""load_pretrained on both layouts; convert CLI; Auto classes; clear errors for bad folders/files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml

import funasr_nano_hf
from funasr_nano_hf import CheckpointError, load_pretrained
from funasr_nano_hf.cli.main import main as cli_main
from funasr_nano_hf.conversion import detect_layout
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
