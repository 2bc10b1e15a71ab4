"""The ORIGINAL FunASR layout <-> our transformers layout: config and tensor names, both ways.

One rule table serves loading and export, so a name that maps one way maps back the same way.
Original keys (FunASR `FunASRNano.state_dict()`):
  audio_encoder.encoders0.0.* (layer 0, input 560) / encoders.{i}.* / tp_encoders.{j}.*,
  audio_encoder.after_norm / tp_norm, audio_adaptor.linear1/2 + blocks.{k}.*, llm.model.*, llm.lm_head.*
Ours: model.audio_tower.layers.{n}.*, model.multi_modal_projector.*, model.language_model.*, lm_head.*
Anything else (FunASR's CTC branch `ctc_decoder.*`, `ctc.*`) has no place in the HF model and is
returned separately so export can write it back unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ..models.configuration_funasr_nano import FunAsrNanoHfConfig

MODEL_PREFIXES = ("audio_encoder.", "audio_adaptor.", "llm.")

# Per-layer renames shared by the encoder (SAN-M) and adaptor (plain MHA) blocks.
_LAYER_RENAMES = (
    ("self_attn.linear_out.", "self_attn.o_proj."),
    ("self_attn.linear_q.", "self_attn.q_proj."),
    ("self_attn.linear_k.", "self_attn.k_proj."),
    ("self_attn.linear_v.", "self_attn.v_proj."),
    ("self_attn.fsmn_block.", "self_attn.fsmn.conv."),
    ("feed_forward.w_1.", "mlp.fc1."),
    ("feed_forward.w_2.", "mlp.fc2."),
    ("norm1.", "input_layernorm."),
    ("norm2.", "post_attention_layernorm."),
)
_FUSED_QKV = "self_attn.linear_q_k_v."


@dataclass(frozen=True)
class EncoderLayout:
    """Where FunASR's three encoder stacks sit in transformers' single list of layers."""

    num_blocks: int  # encoders0 (1) + encoders (num_blocks - 1)
    tp_blocks: int

    def original_to_index(self, stack: str, index: int) -> int:
        return {"encoders0": index, "encoders": 1 + index, "tp_encoders": self.num_blocks + index}[stack]

    def index_to_original(self, index: int) -> tuple[str, int]:
        if index == 0:
            return "encoders0", 0
        if index < self.num_blocks:
            return "encoders", index - 1
        return "tp_encoders", index - self.num_blocks

    @property
    def final_norms(self) -> dict[str, int]:
        return {"after_norm": self.num_blocks - 1, "tp_norm": self.num_blocks + self.tp_blocks - 1}


def _rename_layer_param(rest: str, forward: bool) -> str:
    for original, ours in _LAYER_RENAMES:
        source, target = (original, ours) if forward else (ours, original)
        if rest.startswith(source):
            return target + rest[len(source) :]
    raise KeyError(rest)


def original_to_hf(
    state: dict[str, torch.Tensor], layout: EncoderLayout
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rename (and split FunASR's fused q|k|v) -> (our state dict, tensors we have no place for)."""
    ours: dict[str, torch.Tensor] = {}
    extras: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if match := re.fullmatch(r"audio_encoder\.(encoders0|encoders|tp_encoders)\.(\d+)\.(.+)", key):
            stack, index, rest = match.group(1), int(match.group(2)), match.group(3)
            prefix = f"model.audio_tower.layers.{layout.original_to_index(stack, index)}."
            if rest.startswith(_FUSED_QKV):
                kind = rest[len(_FUSED_QKV) :]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    ours[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
            else:
                ours[prefix + _rename_layer_param(rest, forward=True)] = value
        elif match := re.fullmatch(r"audio_encoder\.(after_norm|tp_norm)\.(weight|bias)", key):
            index = layout.final_norms[match.group(1)]
            ours[f"model.audio_tower.layers.{index}.final_layernorm.{match.group(2)}"] = value
        elif match := re.fullmatch(r"audio_adaptor\.linear([12])\.(.+)", key):
            ours[f"model.multi_modal_projector.linear_{match.group(1)}.{match.group(2)}"] = value
        elif match := re.fullmatch(r"audio_adaptor\.blocks\.(\d+)\.(.+)", key):
            rest = _rename_layer_param(match.group(2), forward=True)
            ours[f"model.multi_modal_projector.layers.{match.group(1)}.{rest}"] = value
        elif key.startswith("llm.model."):
            ours["model.language_model." + key[len("llm.model.") :]] = value
        elif key == "llm.lm_head.weight":
            ours["lm_head.weight"] = value
        elif key.startswith(MODEL_PREFIXES):
            raise KeyError(f"model.pt key {key!r} belongs to the model but matches no known Fun-ASR-Nano name")
        else:
            extras[key] = value
    return ours, extras


def hf_to_original(state: dict[str, torch.Tensor], layout: EncoderLayout) -> dict[str, torch.Tensor]:
    """Inverse of `original_to_hf` (fusing q|k|v back)."""
    original: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    norms = {index: name for name, index in layout.final_norms.items()}
    for key, value in state.items():
        if match := re.fullmatch(r"model\.audio_tower\.layers\.(\d+)\.(.+)", key):
            index, rest = int(match.group(1)), match.group(2)
            if rest.startswith("final_layernorm."):
                original[f"audio_encoder.{norms[index]}.{rest.split('.', 1)[1]}"] = value
                continue
            stack, local = layout.index_to_original(index)
            prefix = f"audio_encoder.{stack}.{local}."
            if qkv_match := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                qkv.setdefault((prefix, qkv_match.group(2)), {})[qkv_match.group(1)] = value
            else:
                original[prefix + _rename_layer_param(rest, forward=False)] = value
        elif match := re.fullmatch(r"model\.multi_modal_projector\.linear_([12])\.(.+)", key):
            original[f"audio_adaptor.linear{match.group(1)}.{match.group(2)}"] = value
        elif match := re.fullmatch(r"model\.multi_modal_projector\.layers\.(\d+)\.(.+)", key):
            original[f"audio_adaptor.blocks.{match.group(1)}.{_rename_layer_param(match.group(2), False)}"] = value
        elif key.startswith("model.language_model."):
            original["llm.model." + key[len("model.language_model.") :]] = value
        elif key == "lm_head.weight":
            original["llm.lm_head.weight"] = value
        else:
            raise KeyError(f"no original name for {key!r}")
    for (prefix, kind), parts in qkv.items():
        original[f"{prefix}{_FUSED_QKV}{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return original


def encoder_layout(yaml_conf: dict[str, Any]) -> EncoderLayout:
    enc = yaml_conf["audio_encoder_conf"]
    return EncoderLayout(num_blocks=int(enc["num_blocks"]), tp_blocks=int(enc.get("tp_blocks", 0)))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"config.yaml: {message}")


def hf_config_from_original(
    yaml_conf: dict[str, Any], qwen_config: dict[str, Any], audio_token_id: int
) -> FunAsrNanoHfConfig:
    """Translate FunASR's config.yaml (+ the LLM's config.json) into our config, refusing what we
    cannot reproduce rather than loading it wrongly."""
    _require(yaml_conf.get("model") == "FunASRNano", f"model is {yaml_conf.get('model')!r}, expected 'FunASRNano'")
    _require(
        yaml_conf.get("audio_encoder") == "SenseVoiceEncoderSmall",
        f"audio_encoder {yaml_conf.get('audio_encoder')!r} is not supported (SenseVoiceEncoderSmall only)",
    )
    enc = yaml_conf["audio_encoder_conf"]
    adaptor = yaml_conf["audio_adaptor_conf"]
    frontend = yaml_conf.get("frontend_conf", {})
    llm_conf = yaml_conf.get("llm_conf", {})
    _require(int(enc.get("sanm_shfit", 0)) == 0, "audio_encoder_conf.sanm_shfit != 0 is not supported")
    _require(
        enc.get("selfattention_layer_type", "sanm") == "sanm", "audio_encoder_conf.selfattention_layer_type must be sanm"
    )
    _require(int(adaptor.get("downsample_rate", 1)) == 1, "audio_adaptor_conf.downsample_rate != 1 is not supported")
    _require(frontend.get("cmvn_file") in (None, "null"), "frontend_conf.cmvn_file (CMVN) is not supported")
    llm_hidden = int(qwen_config["hidden_size"])
    layout = encoder_layout(yaml_conf)
    text_config = {key: value for key, value in qwen_config.items() if key not in ("architectures", "torch_dtype")}
    return FunAsrNanoHfConfig(
        audio_config={
            "model_type": "fun_asr_nano_encoder",
            "num_mel_bins": int(frontend.get("n_mels", 80)),
            "num_stacked_frames": int(frontend.get("lfr_m", 7)),
            "hidden_size": int(enc["output_size"]),
            "num_attention_heads": int(enc.get("attention_heads", 4)),
            "intermediate_size": int(enc.get("linear_units", 2048)),
            "num_hidden_layers": layout.num_blocks + layout.tp_blocks,
            "num_timestamp_prediction_layers": layout.tp_blocks,
            "fsmn_kernel_size": int(enc.get("kernel_size", 11)),
            "hidden_dropout": float(enc.get("dropout_rate", 0.1)),
            "attention_dropout": float(enc.get("attention_dropout_rate", 0.0)),
            "layer_norm_eps": 1e-5,
            # FunASR computes positions on the fly; transformers keeps a table. 6001 rows = 6 minutes.
            "max_position_embeddings": 6001,
        },
        adaptor_config={
            "hidden_size": llm_hidden,
            "num_attention_heads": int(adaptor.get("attention_heads", 8)),
            "intermediate_size": llm_hidden // 4,
            "num_hidden_layers": int(adaptor.get("n_layer", 2)),
            "projector_hidden_size": int(adaptor.get("ffn_dim", 2048)),
            "hidden_dropout": float(adaptor.get("dropout_rate", 0.0)),
            "attention_dropout": float(adaptor.get("attention_dropout_rate", 0.0)),
            "layer_norm_eps": 1e-12,
        },
        text_config=text_config,
        audio_token_id=audio_token_id,
        audio_token_rule="low_frame_rate" if adaptor.get("use_low_frame_rate", False) else "all_frames",
        rope_inv_freq_dtype={"bf16": "bfloat16", "fp16": "float16"}.get(llm_conf.get("llm_dtype", "fp32")),
        llm_dtype=llm_conf.get("llm_dtype", "fp32"),
        tie_word_embeddings=bool(qwen_config.get("tie_word_embeddings", True)),
    )


def feature_extractor_kwargs(yaml_conf: dict[str, Any]) -> dict[str, Any]:
    frontend = yaml_conf.get("frontend_conf", {})
    return {
        "feature_size": int(frontend.get("n_mels", 80)),
        "sampling_rate": int(frontend.get("fs", 16000)),
        "frame_length": int(frontend.get("frame_length", 25)),
        "frame_shift": int(frontend.get("frame_shift", 10)),
        "num_frames_lfr": int(frontend.get("lfr_m", 7)),
        "stride_lfr": int(frontend.get("lfr_n", 6)),
        "window": frontend.get("window", "hamming"),
    }
