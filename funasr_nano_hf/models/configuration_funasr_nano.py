"""Configuration of Fun-ASR-Nano as FunASR runs it.

Builds on transformers' `FunAsrNanoConfig` and adds the values its port does not reproduce (measured against
FunASR 1.4.16 on the same weights): how many audio frames the LLM sees (`audio_token_rule`), the bf16 rounding
FunASR's build-time cast leaves in the RoPE frequencies (`rope_inv_freq_dtype`), and the adaptor LayerNorm eps
(1e-12 in FunASR, 1e-5 in transformers' default). It also records FunASR's `llm_dtype` and the original
config.yaml. The model type is deliberately NOT `fun_asr_nano`: a folder we write must not load silently into
stock transformers, whose audio-token rule differs; without `import funasr_nano_hf` it fails loudly
("unrecognized model type").
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.fun_asr_nano.configuration_fun_asr_nano import FunAsrNanoAdaptorConfig, FunAsrNanoConfig

AUDIO_TOKEN_RULES = ("low_frame_rate", "all_frames")

# FunASR's dtype names (config.yaml's and FunASR's training option `llm_conf.llm_dtype`, our `--dtype` and
# `--llm_dtype`) -> torch dtypes. The one map. (`rope_inv_freq_dtype` holds torch's own names, "bfloat16", as
# the config.json files already written do.)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@strict
class FunAsrNanoHfConfig(FunAsrNanoConfig):
    r"""
    transformers' `FunAsrNanoConfig` plus the values needed to compute exactly what FunASR computes.

    audio_token_rule (`str`, defaults to `"low_frame_rate"`):
        How many adaptor frames the LLM sees per clip. `"low_frame_rate"` is FunASR's
        `use_low_frame_rate: true`: ceil(T_lfr / 8) tokens (three stride-2 reductions of the count), filled
        with the FIRST ceil(T_lfr / 8) adaptor frames; the released model was trained that way. `"all_frames"`
        is stock transformers' rule (every frame), kept only to measure the difference.
    rope_inv_freq_dtype (`str` or `None`, defaults to `"bfloat16"`):
        A torch dtype name. FunASR casts the LLM to `llm_dtype` (bf16) when it builds it, which also rounds the
        RoPE `inv_freq` buffer; casting back to fp32 does not restore it, so the released model runs (and was
        trained) with bf16-rounded frequencies. `None` keeps exact fp32 frequencies.
    llm_dtype (`str`, defaults to `"bf16"`):
        FunASR's `llm_conf.llm_dtype` (a key of `DTYPES`): the dtype FunASR's LLM computes in (FunASR casts the
        LLM to it and autocasts the LLM's forward to it); the audio encoder and adaptor compute in fp32 whatever
        it is. Recorded from config.yaml; this model computes in the dtype of its LLM weights.
    funasr_config (`dict`, *optional*):
        The original config.yaml this model was converted from, recorded as it was.
    """

    model_type = "funasr_nano_hf"
    sub_configs_defaults = {
        **FunAsrNanoConfig.sub_configs_defaults,
        # FunASR's adaptor blocks use funasr.models.transformer.layer_norm.LayerNorm with eps=1e-12.
        "adaptor_config": SubConfigSpec(
            config_class=FunAsrNanoAdaptorConfig,
            init_kwargs={"hidden_size": 1024, "intermediate_size": 1024 // 4, "layer_norm_eps": 1e-12},
        ),
    }

    audio_token_rule: str = "low_frame_rate"
    rope_inv_freq_dtype: str | None = "bfloat16"
    llm_dtype: str = "bf16"
    funasr_config: dict | None = None

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.audio_token_rule not in AUDIO_TOKEN_RULES:
            raise ValueError(f"audio_token_rule must be one of {AUDIO_TOKEN_RULES}, got {self.audio_token_rule!r}")


AutoConfig.register(FunAsrNanoHfConfig.model_type, FunAsrNanoHfConfig)

__all__ = ["AUDIO_TOKEN_RULES", "DTYPES", "FunAsrNanoHfConfig"]
