"""Fun-ASR-Nano as FunASR computes it, on transformers' `fun_asr_nano` classes.

Thin subclasses; each change makes the output match FunASR's (measured against FunASR 1.4.16, same weights):
- the adaptor masks padding frames (stock transformers leaves its attention mask unset);
- the LLM receives the FIRST ceil(T_lfr/8) adaptor frames of each clip (`audio_token_rule`);
- RoPE inverse frequencies are rounded to bf16 as FunASR's build-time cast leaves them;
- the audio encoder and adaptor stay fp32 whatever dtype the LLM runs in (FunASR keeps them fp32;
  the adaptor's activations reach |x| ~ 1e3 and overflow in fp16), and compute in their weights' dtype with
  autocast off (FunASR autocasts only the LLM), so `--bf16`/`--fp16` mixed precision leaves them in fp32.
The adaptor LayerNorm eps (1e-12) is a config value.
Not parity changes, memory (same forward numbers): the LLM's SDPA attention on CPU groups K/V heads in the kernel
(`attention_funasr_nano`); its MLP keeps two activations for backward, not three (`mlp_funasr_nano`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForSpeechSeq2Seq
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import (
    FunAsrNanoCausalLMOutputWithPast,
    FunAsrNanoForConditionalGeneration,
    FunAsrNanoModel,
    FunAsrNanoModelOutputWithPast,
    FunAsrNanoPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple

from .attention_funasr_nano import group_kv_heads_in_kernel
from .configuration_funasr_nano import FunAsrNanoHfConfig
from .mlp_funasr_nano import save_fewer_mlp_activations
from .processing_funasr_nano import audio_token_count

# Beside model.safetensors: the tensors the HF model has no place for (FunASR's CTC branch), kept for export.
EXTRA_STATE_FILE = "funasr_extra_state.safetensors"
# The audio path (encoder, adaptor): fp32 whatever dtype the LLM runs in, as in FunASR.
AUDIO_MODULES = ("audio_tower", "multi_modal_projector")


def _rope_rounding_dtype(name: str) -> torch.dtype:
    """The torch dtype that `rope_inv_freq_dtype` names ("bfloat16" -> torch.bfloat16)."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"rope_inv_freq_dtype must name a torch dtype (e.g. 'bfloat16'), got {name!r}")
    return dtype


def _rounded_rotary_class(base: type[nn.Module], dtype: torch.dtype) -> type[nn.Module]:
    """A subclass of the LLM's rotary embedding whose default `inv_freq` is rounded through `dtype`.

    Overriding `compute_default_rope_parameters` (rather than editing the buffer once) keeps the rounding
    when transformers re-initialises non-persistent buffers after `from_pretrained`.
    """

    def compute_default_rope_parameters(config, *args, **kwargs):
        inv_freq, scaling = base.compute_default_rope_parameters(config, *args, **kwargs)
        return inv_freq.to(dtype).to(inv_freq.dtype), scaling

    name = f"{base.__name__.replace('RotaryEmbedding', '')}RoundedRotaryEmbedding"
    return type(name, (base,), {"compute_default_rope_parameters": staticmethod(compute_default_rope_parameters)})


@dataclass
class FunAsrNanoHfAudioOutput(BaseModelOutputWithPooling):
    r"""
    The audio path's outputs, with every adaptor frame and the count the LLM sees (the frozen-path cache
    stores them).

    adaptor_hidden_states (`torch.Tensor` of shape `(batch, frames, llm_hidden)`): every adaptor frame.
    audio_token_lengths (`torch.LongTensor` of shape `(batch,)`): frames given to the LLM per clip.
    """

    adaptor_hidden_states: torch.Tensor | None = None
    audio_token_lengths: torch.Tensor | None = None


class FunAsrNanoHfModel(FunAsrNanoModel):
    """transformers' `FunAsrNanoModel` computing what FunASR computes: adaptor padding mask, FunASR's audio
    frames for the LLM, rounded RoPE frequencies; also accepts precomputed audio frames (`audio_embeds`)."""

    config_class = FunAsrNanoHfConfig
    _keep_in_fp32_modules_strict = list(AUDIO_MODULES)

    def __init__(self, config: FunAsrNanoHfConfig) -> None:
        super().__init__(config)
        # transformers never sets an attention implementation on the adaptor's config (no PreTrainedModel
        # owns it), so `create_bidirectional_mask` returns None and the adaptor attends to padding frames:
        # a padded batch changes every shorter clip's output. FunASR masks them. Use the encoder's choice.
        config.adaptor_config._attn_implementation = config.audio_config._attn_implementation or "sdpa"
        group_kv_heads_in_kernel(self.language_model)  # SDPA on CPU: no K/V head copies (attention_funasr_nano)
        save_fewer_mlp_activations(self.language_model)  # 2 of the MLP's 3 activations kept (mlp_funasr_nano)
        if config.rope_inv_freq_dtype is not None:
            rotary = self.language_model.rotary_emb
            if getattr(rotary, "rope_type", "default") != "default":
                raise ValueError(
                    f"rope_inv_freq_dtype rounding supports the default RoPE only, got {rotary.rope_type!r}"
                )
            rounded = _rounded_rotary_class(type(rotary), _rope_rounding_dtype(config.rope_inv_freq_dtype))
            self.language_model.rotary_emb = rounded(config=self.language_model.config).to(rotary.inv_freq.device)

    @can_return_tuple
    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | FunAsrNanoHfAudioOutput:
        """Encoder + adaptor; `pooler_output` holds the frames the LLM sees, clip after clip. ``return_dict=False``
        gives the tuple, as the parent's ``@can_return_tuple`` contract says. A frozen audio path (no parameter
        trained, features without gradient: LoRA, `freeze_encoder` + `freeze_adaptor`) runs without autograd even
        inside a training step -- nothing of it can get a gradient, and the grad-mode bookkeeping of its ~1 000
        ops measured ~8 % of its time at the real size."""
        device_type = input_features.device.type
        autocast_off = (
            torch.autocast(device_type, enabled=False)
            if torch.amp.is_autocast_available(device_type)
            else (contextlib.nullcontext())
        )
        needs_grad = torch.is_grad_enabled() and (input_features.requires_grad or bool(self.trained_audio_modules()))
        # the audio path computes in its weights' dtype (fp32), whatever autocast is around
        with autocast_off, torch.set_grad_enabled(needs_grad):
            encoder_outputs = self.audio_tower(
                input_features=input_features.to(next(self.audio_tower.parameters()).dtype),
                input_features_mask=input_features_mask,
                return_dict=True,
                **kwargs,
            )
            adaptor_out = self.multi_modal_projector(
                encoder_outputs.last_hidden_state.to(self.multi_modal_projector.linear_1.weight.dtype),
                input_features_mask,
                **kwargs,
            )
        mask = input_features_mask.to(device=adaptor_out.device, dtype=torch.bool)
        lengths = audio_token_count(mask.sum(-1), self.config.audio_token_rule)
        positions = torch.arange(adaptor_out.shape[1], device=adaptor_out.device)
        selected = positions[None, :] < lengths[:, None]
        return FunAsrNanoHfAudioOutput(
            last_hidden_state=encoder_outputs.last_hidden_state,
            pooler_output=adaptor_out[selected],
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
            adaptor_hidden_states=adaptor_out,
            audio_token_lengths=lengths,
        )

    def trained_audio_modules(self) -> list[str]:
        """The audio-path modules (`AUDIO_MODULES`: encoder, adaptor) with a parameter that is trained (requires
        grad), a peft-wrapped module's trained copy included."""
        return [name for name in AUDIO_MODULES if any(p.requires_grad for p in getattr(self, name).parameters())]

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        audio_embeds: torch.Tensor | None = None,
        audio_embeds_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | FunAsrNanoModelOutputWithPast:
        """The parent's forward (same arguments, same outputs), plus `audio_embeds` [batch, tokens, llm_hidden]
        (+ `audio_embeds_mask`): the adaptor frames the LLM sees, precomputed (frozen-path caching) -- they
        replace the audio encoder and adaptor and fill the audio placeholders of `input_ids` / `inputs_embeds`."""
        common = dict(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        if audio_embeds is None:
            return super().forward(
                input_ids=input_ids,
                input_features=input_features,
                input_features_mask=input_features_mask,
                inputs_embeds=inputs_embeds,
                **common,
            )
        if input_features is not None:
            raise ValueError("pass either input_features or audio_embeds, not both")
        if (input_ids is None and inputs_embeds is None) or audio_embeds_mask is None:
            raise ValueError("audio_embeds needs input_ids (or inputs_embeds) and audio_embeds_mask")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        rows = audio_embeds[audio_embeds_mask.to(torch.bool)]
        placeholders = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, audio_features=rows)
        inputs_embeds = inputs_embeds.masked_scatter(placeholders, rows.to(inputs_embeds.device, inputs_embeds.dtype))
        return super().forward(input_ids=None, inputs_embeds=inputs_embeds, **common)


class FunAsrNanoHfForConditionalGeneration(FunAsrNanoForConditionalGeneration):
    """transformers' `FunAsrNanoForConditionalGeneration` on `FunAsrNanoHfModel`, keeping FunASR's extra tensors
    (`funasr_extra_state`) through save/load so export can write them back."""

    config_class = FunAsrNanoHfConfig
    _keep_in_fp32_modules_strict = list(AUDIO_MODULES)
    # Training steps with labels compute logits only at labelled positions (`labelled_positions_forward`);
    # False: full [batch, sequence, vocab] logits as transformers computes them.
    labelled_logits_only: bool = True

    def __init__(self, config: FunAsrNanoHfConfig) -> None:
        # Same body as the parent's __init__, with our inner model (building the parent's first would
        # allocate the whole 0.8B model twice).
        FunAsrNanoPreTrainedModel.__init__(self, config)
        self.model = FunAsrNanoHfModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        # Weights that the HF model has no place for (e.g. FunASR's CTC branch), kept for export.
        self.funasr_extra_state: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> FunAsrNanoHfForConditionalGeneration:
        """Frozen audio modules stay in eval mode: their outputs are then deterministic (no dropout), which
        frozen-path caching relies on. FunASR's trainer calls `model.train()` every epoch and so runs its
        frozen encoder with dropout 0.1 — a deliberate difference."""
        super().train(mode)
        if mode:
            trained = self.model.trained_audio_modules()
            for name in AUDIO_MODULES:
                if name not in trained:
                    getattr(self.model, name).eval()
        return self

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """transformers' save, plus `funasr_extra_state` (if any) in EXTRA_STATE_FILE."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.funasr_extra_state and kwargs.get("is_main_process", True):
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.funasr_extra_state.items()},
                os.path.join(save_directory, EXTRA_STATE_FILE),
            )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> FunAsrNanoHfForConditionalGeneration:
        """transformers' load, plus `funasr_extra_state` from EXTRA_STATE_FILE when the folder has one. An ORIGINAL
        FunASR folder (config.yaml + model.pt) is read through `conversion.load_pretrained` instead (``dtype`` /
        ``torch_dtype`` and ``device_map`` naming one device are honoured), so that peft's `AutoPeftModel`, which
        calls this method with the adapter's ``base_model_name_or_path``, can build a FunASR base too."""
        original = _original_folder(pretrained_model_name_or_path, kwargs.get("revision"))
        if original is not None:
            return _load_original_folder(cls, original, args, kwargs)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        extra = os.path.join(str(pretrained_model_name_or_path), EXTRA_STATE_FILE)
        if os.path.isfile(extra):
            model.funasr_extra_state = load_file(extra)
        return model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> FunAsrNanoCausalLMOutputWithPast:
        """The parent's forward; in a training step (`labels` given, `self.training`, `labelled_logits_only`,
        no `logits_to_keep`) `lm_head` and the loss run only at the positions that predict a label
        (`labelled_positions_forward`), so `logits` is then [labelled positions, vocab]."""
        if labels is None or not self.training or not self.labelled_logits_only or not _keeps_all(logits_to_keep):
            return super().forward(
                input_ids=input_ids,
                input_features=input_features,
                input_features_mask=input_features_mask,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        return self.labelled_positions_forward(
            labels,
            input_ids=input_ids,
            input_features=input_features,
            input_features_mask=input_features_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )

    def labelled_positions_forward(self, labels: torch.LongTensor, **kwargs: Any) -> FunAsrNanoCausalLMOutputWithPast:
        """The LLM's hidden states, then `lm_head` and the parent's `loss_function` only where the shifted label
        is not IGNORE (-100): the same loss as over full logits (ignored positions add nothing to it nor to any
        gradient) without the [batch, sequence, vocab] logits — most of a step's `lm_head` cost, as only the
        transcript tokens carry labels. `logits` holds those rows, batch-first in row-major order."""
        loss_kwargs = {k: kwargs.pop(k) for k in ("num_items_in_batch", "ignore_index") if k in kwargs}
        return_dict = kwargs.pop("return_dict", None)
        outputs = self.model(**kwargs, return_dict=True)
        hidden = outputs.last_hidden_state
        if labels.shape != hidden.shape[:2]:
            raise ValueError(
                f"labels has shape {tuple(labels.shape)}, the sequence {tuple(hidden.shape[:2])}: labels must be "
                "[batch, sequence] aligned with input_ids (-100 where no token is predicted)"
            )
        ignore_index = loss_kwargs.get("ignore_index", -100)
        shifted = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:].to(hidden.device)
        keep = shifted != ignore_index
        logits = self.lm_head(hidden[keep])
        loss = self.loss_function(
            logits=logits,
            labels=None,
            shift_labels=shifted[keep],
            vocab_size=self.config.text_config.vocab_size,
            **loss_kwargs,
        )
        result = FunAsrNanoCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            audio_hidden_states=outputs.audio_hidden_states,
        )
        return result.to_tuple() if return_dict is False else result


def _keeps_all(logits_to_keep: int | torch.Tensor) -> bool:
    """Whether `logits_to_keep` (transformers' convention) asks for every position's logits."""
    return isinstance(logits_to_keep, int) and logits_to_keep == 0


def _original_folder(name: str | os.PathLike, revision: str | None) -> str | None:
    """The local folder of `name` when it is an ORIGINAL FunASR model (a folder with config.yaml + model.pt, or a
    Hub id whose snapshot is one); None for anything transformers reads itself."""
    from ..conversion.loading import detect_layout, resolve_model_dir

    folder = str(name)
    if not os.path.isdir(folder):
        if os.path.exists(folder) or not _looks_like_original_hub_id(folder, revision):
            return None
        folder = str(resolve_model_dir(folder, revision=revision))
    try:
        return folder if detect_layout(folder) == "original" else None
    except Exception:  # not ours: let transformers report it
        return None


def _looks_like_original_hub_id(name: str, revision: str | None) -> bool:
    """Whether Hub model `name` ships FunASR's layout (model.pt, no config.json); False when it cannot be told."""
    try:
        from huggingface_hub import file_exists

        has_original = file_exists(name, "model.pt", revision=revision)
        return has_original and not file_exists(name, "config.json", revision=revision)
    except Exception:  # offline, unknown repo, not a repo id: transformers gives its own error
        return False


def _load_original_folder(
    cls: type[FunAsrNanoHfForConditionalGeneration], folder: str, args: tuple, kwargs: dict[str, Any]
) -> FunAsrNanoHfForConditionalGeneration:
    """`conversion.load_pretrained` of an original folder for `cls.from_pretrained`; options it cannot honour are
    refused by name rather than ignored."""
    from ..conversion.loading import load_pretrained

    kwargs = dict(kwargs)
    kwargs.pop("revision", None)
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    if isinstance(dtype, str):
        dtype = None if dtype == "auto" else getattr(torch, dtype)
    device = kwargs.pop("device_map", None) or "cpu"
    for harmless in ("trust_remote_code", "token", "cache_dir", "local_files_only"):
        kwargs.pop(harmless, None)
    if args or kwargs or not isinstance(device, (str, torch.device)) or device == "auto":
        raise ValueError(
            f"{folder} is an original FunASR folder (config.yaml + model.pt): from_pretrained reads it with dtype and "
            f"a single-device device_map only; got {sorted(kwargs) or ''} {args or ''} device_map={device!r}. "
            "Convert it with `funasr-nano-hf convert-model` for every transformers loading option."
        )
    model, _ = load_pretrained(folder, dtype=dtype, device=device)
    if not isinstance(model, cls):
        raise TypeError(f"{folder} loads as {type(model).__name__}, not {cls.__name__}")
    return model


AutoModel.register(FunAsrNanoHfConfig, FunAsrNanoHfModel)
AutoModelForSpeechSeq2Seq.register(FunAsrNanoHfConfig, FunAsrNanoHfForConditionalGeneration)

__all__ = ["FunAsrNanoHfModel", "FunAsrNanoHfForConditionalGeneration", "FunAsrNanoHfAudioOutput"]
