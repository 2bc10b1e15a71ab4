"""FunASR's ORIGINAL layout <-> our transformers layout: the config, and every tensor name both ways.

Original tensor names (FunASR `FunASRNano.state_dict()`):
  audio_encoder.encoders0.0.* (block 0, input 560) / encoders.{i}.* / tp_encoders.{j}.*,
  audio_encoder.after_norm / tp_norm, audio_adaptor.linear1/2 + blocks.{k}.*, llm.model.*, llm.lm_head.*
Ours: model.audio_tower.layers.{n}.*, model.multi_modal_projector.*, model.language_model.*, lm_head.*

Names map through ONE rule table, `rename_rules(layout)`: (original prefix, HF prefix) pairs, read left to right
by `original_to_hf` (loading) and right to left by `hf_to_original` (export), so a name that maps one way maps
back the same way; the table is refused if it is not one-to-one. The one step that is not a rename is FunASR's
fused encoder projection `self_attn.linear_q_k_v` (rows q|k|v): loading splits it into the `linear_q/k/v`
the table names, export fuses those back. Tensors outside the model (FunASR's CTC branch `ctc_decoder.*`,
`ctc.*`) have no place in the HF model: loading returns them separately so they can be written back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.configuration_funasr_nano import DTYPES, FunAsrNanoHfConfig

# Every tensor under these prefixes belongs to the model and must map; anything else is kept aside.
MODEL_PREFIXES = ("audio_encoder.", "audio_adaptor.", "llm.")

# Parameter names inside one block (original, ours): shared by the encoder's SAN-M blocks and the adaptor's
# attention blocks.
BLOCK_RULES: tuple[tuple[str, str], ...] = (
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

# FunASR's SAN-M encoder blocks store q, k and v as one tensor (rows q|k|v) under FUSED_QKV.
FUSED_QKV = "self_attn.linear_q_k_v."
SPLIT_QKV = ("self_attn.linear_q.", "self_attn.linear_k.", "self_attn.linear_v.")
_FUSED_STACK = "audio_encoder."


@dataclass(frozen=True)
class OriginalLayout:
    """How many blocks each of FunASR's stacks has: the names of the tensors depend on it, because
    transformers keeps the encoder's three stacks (encoders0, encoders, tp_encoders) as ONE list of layers."""

    num_blocks: int  # encoders0 (1 block) + encoders (num_blocks - 1)
    tp_blocks: int
    adaptor_blocks: int

    def block_prefixes(self) -> list[tuple[str, str]]:
        """(original, HF) name prefix of every block: the encoder's, in the order of `model.audio_tower.layers`,
        then the adaptor's."""
        encoder = ["encoders0.0"] + [f"encoders.{i}" for i in range(self.num_blocks - 1)]
        encoder += [f"tp_encoders.{j}" for j in range(self.tp_blocks)]
        adaptor = range(self.adaptor_blocks)
        return [(f"audio_encoder.{name}.", f"model.audio_tower.layers.{n}.") for n, name in enumerate(encoder)] + [
            (f"audio_adaptor.blocks.{k}.", f"model.multi_modal_projector.layers.{k}.") for k in adaptor
        ]


def layout_from_config(yaml_conf: dict[str, Any]) -> OriginalLayout:
    """The block counts in FunASR's config.yaml: `audio_encoder_conf.num_blocks` / `tp_blocks` and
    `audio_adaptor_conf.n_layer`."""
    enc = yaml_conf["audio_encoder_conf"]
    return OriginalLayout(
        num_blocks=int(enc["num_blocks"]),
        tp_blocks=int(enc.get("tp_blocks", 0)),
        adaptor_blocks=int(yaml_conf["audio_adaptor_conf"].get("n_layer", 2)),
    )


def rename_rules(layout: OriginalLayout) -> list[tuple[str, str]]:
    """The rule table: (original prefix, HF prefix) pairs. A name maps by the rule whose prefix it starts with.

    Only the last block of each encoder stack normalises its output in transformers, so FunASR's
    `after_norm` / `tp_norm` become that layer's `final_layernorm`.
    """
    blocks = layout.block_prefixes()
    last_encoder, last_tp = layout.num_blocks - 1, layout.num_blocks + layout.tp_blocks - 1
    return [(block + original, layer + ours) for block, layer in blocks for original, ours in BLOCK_RULES] + [
        ("audio_encoder.after_norm.", f"model.audio_tower.layers.{last_encoder}.final_layernorm."),
        ("audio_encoder.tp_norm.", f"model.audio_tower.layers.{last_tp}.final_layernorm."),
        ("audio_adaptor.linear1.", "model.multi_modal_projector.linear_1."),
        ("audio_adaptor.linear2.", "model.multi_modal_projector.linear_2."),
        ("llm.model.", "model.language_model."),
        ("llm.lm_head.", "lm_head."),
    ]


def _prefix_map(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """`pairs` as a lookup, refused unless one-to-one and no source prefix starts another (so every name
    has at most one rule, and the reversed pairs map every result back)."""
    table = dict(pairs)
    if len(table) != len(pairs) or len(set(table.values())) != len(pairs):
        raise ValueError("the rename rules are not one-to-one")
    names = sorted(table)
    for shorter, longer in zip(names, names[1:]):
        if longer.startswith(shorter):
            raise ValueError(f"the rename rules {shorter!r} and {longer!r} overlap")
    return table


def _rename(key: str, table: dict[str, str]) -> str | None:
    """`key` with its rule's prefix replaced, or None if no rule applies (every rule prefix ends at a dot)."""
    end = len(key)
    while (end := key.rfind(".", 0, end)) >= 0:
        target = table.get(key[: end + 1])
        if target is not None:
            return target + key[end + 1 :]
    return None


def _split_qkv(key: str, value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """A fused encoder `linear_q_k_v` tensor as its three `linear_q/k/v` parts; any other tensor as is."""
    head, fused, tail = key.partition(FUSED_QKV)
    if not fused or not key.startswith(_FUSED_STACK):
        return [(key, value)]
    return [(head + name + tail, part.contiguous()) for name, part in zip(SPLIT_QKV, value.chunk(3, dim=0))]


def _fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `_split_qkv` over a state dict in original names."""
    fused: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        for index, name in enumerate(SPLIT_QKV):
            head, found, tail = key.partition(name)
            if found and key.startswith(_FUSED_STACK):
                parts.setdefault(head + FUSED_QKV + tail, {})[index] = value
                break
        else:
            fused[key] = value
    for key, qkv in parts.items():
        if len(qkv) != len(SPLIT_QKV):
            raise KeyError(f"{key}: needs all of q, k and v to fuse")
        fused[key] = torch.cat([qkv[index] for index in range(len(SPLIT_QKV))], dim=0)
    return fused


def original_to_hf(
    state: dict[str, torch.Tensor], layout: OriginalLayout
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Loading: FunASR's state dict -> (our state dict, the tensors the HF model has no place for)."""
    to_hf = _prefix_map(rename_rules(layout))
    ours: dict[str, torch.Tensor] = {}
    extras: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for name, tensor in _split_qkv(key, value):
            if (target := _rename(name, to_hf)) is not None:
                ours[target] = tensor
            elif key.startswith(MODEL_PREFIXES):
                raise KeyError(f"model.pt key {key!r} belongs to the model but matches no known Fun-ASR-Nano name")
            else:
                extras[key] = value
    return ours, extras


def hf_to_original(state: dict[str, torch.Tensor], layout: OriginalLayout) -> dict[str, torch.Tensor]:
    """Export: our state dict -> FunASR's names (the rule table read right to left), q|k|v fused back."""
    to_original = _prefix_map([(ours, original) for original, ours in rename_rules(layout)])
    original: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if (target := _rename(key, to_original)) is None:
            raise KeyError(f"no original name for {key!r}")
        original[target] = value
    return _fuse_qkv(original)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"config.yaml: {message}")


def _rope_rounding_dtype(llm_dtype: str) -> str | None:
    """`rope_inv_freq_dtype` for FunASR's `llm_dtype`: the torch name ("bfloat16") of the dtype FunASR casts the
    LLM to at build time, which rounds the RoPE frequencies; None for fp32 (nothing is rounded)."""
    dtype = DTYPES.get(llm_dtype, torch.float32)
    return None if dtype == torch.float32 else str(dtype).removeprefix("torch.")


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
        enc.get("selfattention_layer_type", "sanm") == "sanm",
        "audio_encoder_conf.selfattention_layer_type must be sanm",
    )
    _require(int(adaptor.get("downsample_rate", 1)) == 1, "audio_adaptor_conf.downsample_rate != 1 is not supported")
    _require(frontend.get("cmvn_file") in (None, "null"), "frontend_conf.cmvn_file (CMVN) is not supported")
    layout = layout_from_config(yaml_conf)
    # FunASR applies after_norm, then the timestamp stack, then tp_norm; with no timestamp block transformers
    # would have one layer norm for both.
    _require(layout.tp_blocks >= 1, "audio_encoder_conf.tp_blocks < 1 is not supported")
    llm_hidden = int(qwen_config["hidden_size"])
    llm_dtype = llm_conf.get("llm_dtype", "fp32")
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
            "num_hidden_layers": layout.adaptor_blocks,
            "projector_hidden_size": int(adaptor.get("ffn_dim", 2048)),
            "hidden_dropout": float(adaptor.get("dropout_rate", 0.0)),
            "attention_dropout": float(adaptor.get("attention_dropout_rate", 0.0)),
            "layer_norm_eps": 1e-12,
        },
        text_config=text_config,
        audio_token_id=audio_token_id,
        audio_token_rule="low_frame_rate" if adaptor.get("use_low_frame_rate", False) else "all_frames",
        rope_inv_freq_dtype=_rope_rounding_dtype(llm_dtype),
        llm_dtype=llm_dtype,
        tie_word_embeddings=bool(qwen_config.get("tie_word_embeddings", True)),
    )


def feature_extractor_kwargs(yaml_conf: dict[str, Any]) -> dict[str, Any]:
    """`FunAsrNanoHfFeatureExtractor` arguments from config.yaml's `frontend_conf` (FunASR's `WavFrontend`)."""
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
