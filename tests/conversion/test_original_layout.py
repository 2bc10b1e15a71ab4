"""The one rule table of tensor names: FunASR's names -> ours -> FunASR's again, exactly (fast, no model built)."""

from __future__ import annotations

import pytest
import torch

from funasr_nano_hf.conversion.original_layout import (
    OriginalLayout,
    hf_config_from_original,
    hf_to_original,
    layout_from_config,
    original_to_hf,
    rename_rules,
)

LAYOUT = OriginalLayout(num_blocks=3, tp_blocks=2, adaptor_blocks=2)
ENCODER_PARAMS = [
    "self_attn.linear_q_k_v.weight",
    "self_attn.linear_q_k_v.bias",
    "self_attn.linear_out.weight",
    "self_attn.linear_out.bias",
    "self_attn.fsmn_block.weight",
    "feed_forward.w_1.weight",
    "feed_forward.w_1.bias",
    "feed_forward.w_2.weight",
    "feed_forward.w_2.bias",
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
]
ADAPTOR_PARAMS = [
    f"self_attn.linear_{name}.{kind}" for name in ("q", "k", "v", "out") for kind in ("weight", "bias")
] + ["feed_forward.w_1.weight", "feed_forward.w_2.bias", "norm1.weight", "norm2.bias"]


def _original_state() -> dict[str, torch.Tensor]:
    """FunASR's tensor names for LAYOUT (written out by hand, not from the rule table), random bf16 values."""
    blocks = ["encoders0.0", "encoders.0", "encoders.1", "tp_encoders.0", "tp_encoders.1"]
    names = [f"audio_encoder.{block}.{param}" for block in blocks for param in ENCODER_PARAMS]
    names += ["audio_encoder.after_norm.weight", "audio_encoder.after_norm.bias", "audio_encoder.tp_norm.weight"]
    names += [f"audio_adaptor.blocks.{k}.{param}" for k in range(2) for param in ADAPTOR_PARAMS]
    names += ["audio_adaptor.linear1.weight", "audio_adaptor.linear2.bias"]
    names += ["llm.model.embed_tokens.weight", "llm.model.layers.0.self_attn.q_proj.weight", "llm.model.norm.weight"]
    names += ["llm.lm_head.weight", "ctc.ctc_lo.weight", "ctc_decoder.linear1.weight"]
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(6, 4, generator=generator).to(torch.bfloat16) for name in names}


def test_names_map_to_the_hf_layers():
    original = _original_state()
    ours, extras = original_to_hf(original, LAYOUT)
    assert sorted(extras) == ["ctc.ctc_lo.weight", "ctc_decoder.linear1.weight"]
    fused = original["audio_encoder.encoders.1.self_attn.linear_q_k_v.weight"]
    for part, name in enumerate(("q_proj", "k_proj", "v_proj")):  # encoders.1 is HF layer 2; rows q|k|v
        assert torch.equal(ours[f"model.audio_tower.layers.2.self_attn.{name}.weight"], fused[2 * part : 2 * part + 2])
    expected = {
        "audio_encoder.encoders0.0.norm1.weight": "model.audio_tower.layers.0.input_layernorm.weight",
        "audio_encoder.encoders.0.self_attn.fsmn_block.weight": "model.audio_tower.layers.1.self_attn.fsmn.conv.weight",
        "audio_encoder.tp_encoders.1.feed_forward.w_2.bias": "model.audio_tower.layers.4.mlp.fc2.bias",
        "audio_encoder.after_norm.bias": "model.audio_tower.layers.2.final_layernorm.bias",
        "audio_encoder.tp_norm.weight": "model.audio_tower.layers.4.final_layernorm.weight",
        "audio_adaptor.blocks.1.self_attn.linear_v.bias": "model.multi_modal_projector.layers.1.self_attn.v_proj.bias",
        "audio_adaptor.blocks.0.norm2.bias": "model.multi_modal_projector.layers.0.post_attention_layernorm.bias",
        "audio_adaptor.linear2.bias": "model.multi_modal_projector.linear_2.bias",
        "llm.model.layers.0.self_attn.q_proj.weight": "model.language_model.layers.0.self_attn.q_proj.weight",
        "llm.lm_head.weight": "lm_head.weight",
    }
    for name, hf_name in expected.items():
        assert ours[hf_name] is original[name], name
    assert len(ours) == len(original) - len(extras) + 2 * 5 * 2  # each fused weight/bias becomes three


def test_round_trip_is_exact():
    original = _original_state()
    ours, extras = original_to_hf(original, LAYOUT)
    back = hf_to_original(ours, LAYOUT)
    assert set(back) == set(original) - set(extras)
    for key, value in back.items():
        assert value.dtype == original[key].dtype and torch.equal(value, original[key]), key


def test_rule_table_is_one_to_one():
    rules = rename_rules(OriginalLayout(num_blocks=50, tp_blocks=20, adaptor_blocks=2))
    assert len({original for original, _ in rules}) == len({ours for _, ours in rules}) == len(rules)


def test_unknown_names_refused():
    with pytest.raises(KeyError, match="matches no known Fun-ASR-Nano name"):
        original_to_hf({"audio_encoder.encoders.7.norm1.weight": torch.zeros(1)}, LAYOUT)
    with pytest.raises(KeyError, match="no original name"):
        hf_to_original({"model.audio_tower.layers.0.final_layernorm.weight": torch.zeros(1)}, LAYOUT)


def test_layout_and_config_from_yaml():
    yaml_conf = {
        "model": "FunASRNano",
        "audio_encoder": "SenseVoiceEncoderSmall",
        "audio_encoder_conf": {"output_size": 32, "num_blocks": 3, "tp_blocks": 2},
        "audio_adaptor_conf": {"n_layer": 2, "ffn_dim": 16},
        "llm_conf": {"llm_dtype": "bf16"},
    }
    qwen = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 100,
        "model_type": "qwen3",
    }
    assert layout_from_config(yaml_conf) == LAYOUT
    config = hf_config_from_original(yaml_conf, qwen, audio_token_id=7)
    assert (config.rope_inv_freq_dtype, config.llm_dtype) == ("bfloat16", "bf16")
    for llm_dtype, rounding in (("fp16", "float16"), ("fp32", None)):
        yaml_conf["llm_conf"]["llm_dtype"] = llm_dtype
        assert hf_config_from_original(yaml_conf, qwen, audio_token_id=7).rope_inv_freq_dtype == rounding
    yaml_conf["audio_encoder_conf"]["tp_blocks"] = 0  # after_norm and tp_norm would share one layer norm
    with pytest.raises(ValueError, match="tp_blocks"):
        hf_config_from_original(yaml_conf, qwen, audio_token_id=7)
