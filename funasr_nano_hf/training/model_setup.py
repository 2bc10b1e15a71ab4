"""Freezing, LLM dtype and LoRA (peft) for fine-tuning, as FunASR's recipes set them up.

`llm_dtype` is the dtype the LLM computes in: the language model (and its tied `lm_head`) is cast to it, while
the audio encoder and adaptor stay fp32; whatever trains keeps fp32 master weights (`precision`).

LoRA together with a trained module (FunASR's default trains the adaptor: `audio_adaptor_conf.freeze: false`):
every module the run trains besides the LoRA matrices is a peft ``modules_to_save`` entry, so the adapter
folder holds its trained weights and `PeftModel.from_pretrained` / `AutoPeftModel` restore them with no extra
code (checkpoints, resume, `final/`, the n-best average, merging and export alike). With the LLM unfrozen, its
LoRA-targeted linears keep their base weights frozen (FunASR's LoRA layers freeze them too) and every other
LLM module is saved whole, the tied embedding/`lm_head` pair kept tied (``ensure_weight_tying``).
"""

from __future__ import annotations

import logging
import re

from torch import nn

from ..models.configuration_funasr_nano import DTYPES
from .arguments import ModelArguments
from .precision import checkpoint_llm_dtype, resolve_llm_dtype, upcast_trained_parameters

logger = logging.getLogger(__name__)


def lora_target_regex(target_modules: str) -> str:
    """Only the LLM's linears: the adaptor also has q/k/v/o_proj, which LoRA must not touch."""
    names = "|".join(name.strip() for name in target_modules.split(",") if name.strip())
    return rf"model\.language_model\..*\.({names})"


def modules_to_save(model: nn.Module, args: ModelArguments) -> list[str]:
    """The modules (full names in `model`) that train besides LoRA and so must be saved with the adapter."""
    names = []
    if not args.freeze_audio_encoder:
        names.append("model.audio_tower")
    if not args.freeze_audio_adaptor:
        names.append("model.multi_modal_projector")
    if not args.freeze_llm:
        targets = re.compile(lora_target_regex(args.lora_target_modules))
        for name, module in model.model.language_model.named_modules(prefix="model.language_model"):
            owns_parameters = next(module.parameters(recurse=False), None) is not None
            if owns_parameters and not targets.fullmatch(name):
                names.append(name)
        names.append("lm_head")  # tied to embed_tokens: saved (and kept tied) with it
    return names


def prepare_model_for_finetuning(model: nn.Module, args: ModelArguments) -> nn.Module:
    """The model to train (a `PeftModel` when `use_lora`): the LLM cast to `llm_dtype` (the dtype it computes in;
    the audio encoder and adaptor stay fp32), the frozen parts frozen, gradient checkpointing, LoRA; trained
    parameters in fp32 (master weights; the LLM computes in `llm_dtype` under the Trainer's autocast). ``auto``
    resolves for the model's device (`precision.resolve_llm_dtype`)."""
    llm_dtype = resolve_llm_dtype(args.llm_dtype, checkpoint_llm_dtype(model.config), model.device.type)
    dtype = DTYPES[llm_dtype]
    model.model.language_model.to(dtype)
    model.lm_head.to(dtype)  # tied to the embeddings: same tensor
    parts = {
        "audio_encoder": (model.model.audio_tower, args.freeze_audio_encoder),
        "audio_adaptor": (model.model.multi_modal_projector, args.freeze_audio_adaptor),
        "llm": (model.model.language_model, args.freeze_llm),
    }
    for module, frozen in parts.values():
        module.requires_grad_(not frozen)
    model.lm_head.requires_grad_(not args.freeze_llm)
    if args.activation_checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if args.use_lora:
        from peft import LoraConfig, get_peft_model

        saved = modules_to_save(model, args)
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=lora_target_regex(args.lora_target_modules),
            bias="none",
            modules_to_save=saved or None,
            ensure_weight_tying=not args.freeze_llm,
        )
        # get_peft_model freezes everything but the adapters and trainable copies of `saved` (the originals stay
        # frozen and unused).
        model = get_peft_model(model, lora)
    upcast = upcast_trained_parameters(model)
    if upcast:
        logger.info("%d trained %s parameter tensors kept in fp32 (master weights)", len(upcast), llm_dtype)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise ValueError("nothing to train: every module is frozen and use_lora is off")
    logger.info("trainable parameters: %d / %d (%.3f%%)", trainable, total, 100 * trainable / total)
    return model
