"""Configuration of Fun-ASR-Nano as FunASR runs it.

Builds on transformers' `FunAsrNanoConfig` and adds what its port does not reproduce (see
`../shared/docs/funasr_nano_reference.md`, section 10). The model type is deliberately NOT
`fun_asr_nano`: a folder we write must not load silently into stock transformers, whose audio-token
rule differs; without `import funasr_nano_hf` it fails loudly ("unrecognized model type").
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.fun_asr_nano.configuration_fun_asr_nano import FunAsrNanoAdaptorConfig, FunAsrNanoConfig

AUDIO_TOKEN_RULES = ("low_frame_rate", "all_frames")

# FunASR's dtype names (`llm_conf.llm_dtype`, the guide's `llm_dtype`, our `--dtype`) -> torch dtypes. The one map.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@strict
class FunAsrNanoHfConfig(FunAsrNanoConfig):
    r"""
    audio_token_rule (`str`, defaults to `"low_frame_rate"`):
        How many adaptor frames the LLM sees per clip. `"low_frame_rate"` is FunASR's
        `use_low_frame_rate: true`: ceil(T_lfr / 8) tokens (three stride-2 reductions of the count), filled
        with the FIRST ceil(T_lfr / 8) adaptor frames; the released model was trained that way. `"all_frames"`
        is stock transformers' rule (every frame), kept only to measure the difference.
    rope_inv_freq_dtype (`str` or `None`, defaults to `"bfloat16"`):
        FunASR casts the LLM to `llm_dtype` (bf16) when it builds it, which also rounds the RoPE `inv_freq`
        buffer; casting back to fp32 does not restore it, so the released model runs (and was trained) with
        bf16-rounded frequencies. `None` keeps exact fp32 frequencies.
    llm_dtype (`str`, defaults to `"bf16"`):
        FunASR's `llm_conf.llm_dtype`, kept for export and training defaults.
    funasr_config (`dict`, *optional*):
        The original `config.yaml` this model was converted from, kept so export can write it back.
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

    def validate_architecture(self):
        super().validate_architecture()
        if self.audio_token_rule not in AUDIO_TOKEN_RULES:
            raise ValueError(f"audio_token_rule must be one of {AUDIO_TOKEN_RULES}, got {self.audio_token_rule!r}")


AutoConfig.register(FunAsrNanoHfConfig.model_type, FunAsrNanoHfConfig)

__all__ = ["AUDIO_TOKEN_RULES", "DTYPES", "FunAsrNanoHfConfig"]
