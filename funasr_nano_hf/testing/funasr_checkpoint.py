"""Write checkpoints in the ORIGINAL FunASR layout with FunASR's own classes.

The real Fun-ASR-Nano-2512 weights cannot be downloaded here, so the loading path is proven on folders
that FunASR itself builds: `FunASRNano` from the `funasr` package, random seeded weights, saved exactly
like the release (`config.yaml`, `configuration.json`, `model.pt` = `{"state_dict": ...}` in bf16 with a
separate `llm.lm_head.weight` copy, `Qwen3-0.6B/` with config + tokenizer, no LLM weights there).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from .qwen_tokenizer import QWEN3_VOCAB_SIZE, build_qwen3_tokenizer, build_tiny_qwen_tokenizer

logger = logging.getLogger(__name__)

LLM_DIR_NAME = "Qwen3-0.6B"

# config.yaml of the released Fun-ASR-Nano-2512, the keys that affect the model (values as published with it).
FUN_ASR_NANO_2512_YAML: dict[str, Any] = {
    "model": "FunASRNano",
    "model_conf": {"lsm_weight": 0.1, "length_normalized_loss": True},
    "audio_encoder": "SenseVoiceEncoderSmall",
    "audio_encoder_conf": {
        "output_size": 512,
        "attention_heads": 4,
        "linear_units": 2048,
        "num_blocks": 50,
        "tp_blocks": 20,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": 11,
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
        "freeze": True,
    },
    "audio_adaptor": "Transformer",
    "audio_adaptor_conf": {
        "downsample_rate": 1,
        "use_low_frame_rate": True,
        "ffn_dim": 2048,
        "llm_dim": 1024,
        "encoder_dim": 512,
        "n_layer": 2,
        "freeze": True,
    },
    "llm": "Qwen3-0.6b",
    "llm_conf": {
        "hub": "hf",
        "freeze": True,
        "llm_dtype": "bf16",
        "init_param_path": LLM_DIR_NAME,
        "use_lora": False,
        "lora_conf": {
            "freeze_lora": False,
            "task_type": "CAUSAL_LM",
            "r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.05,
            "target_modules": ["q_proj", "v_proj"],
        },
    },
    "frontend": "WavFrontend",
    "frontend_conf": {
        "fs": 16000,
        "window": "hamming",
        "n_mels": 80,
        "frame_length": 25,
        "frame_shift": 10,
        "lfr_m": 7,
        "lfr_n": 6,
        "cmvn_file": None,
    },
    "tokenizer": "HuggingfaceTokenizer",
    "tokenizer_conf": {"init_param_path": LLM_DIR_NAME, "unk_symbol": "<unk>"},
    "dataset": "FunASR",
    "dataset_conf": {"index_ds": "FunASR", "batch_sampler": "BatchSampler", "batch_type": "token"},
    "train_conf": {"accum_grad": 1, "grad_clip": 5, "use_bf16": False, "use_deepspeed": False},
    "optim": "adamw",
    "optim_conf": {"lr": 5.0e-05, "weight_decay": 0.01},
    "scheduler": "warmuplr",
    "scheduler_conf": {"warmup_steps": 1000},
}

QWEN3_0_6B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": QWEN3_VOCAB_SIZE,
}


def tiny_yaml(hidden: int = 32, llm_hidden: int = 64, encoder_blocks: int = 3, tp_blocks: int = 2) -> dict[str, Any]:
    """A tiny Fun-ASR-Nano config: every structural feature of the real one, seconds to run."""
    conf = copy.deepcopy(FUN_ASR_NANO_2512_YAML)
    conf["audio_encoder_conf"].update(
        output_size=hidden, linear_units=hidden * 2, num_blocks=encoder_blocks, tp_blocks=tp_blocks
    )
    conf["audio_adaptor_conf"].update(ffn_dim=hidden * 2, llm_dim=llm_hidden, encoder_dim=hidden)
    return conf


def tiny_qwen3_config(tokenizer: PreTrainedTokenizerBase, hidden: int = 64, layers: int = 2) -> dict[str, Any]:
    conf = dict(QWEN3_0_6B_CONFIG)
    conf.update(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        max_window_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        max_position_embeddings=4096,
        # Wide random weights: a tiny random LLM with the usual 0.02 repeats one token forever, which would
        # make greedy-decoding comparisons trivially equal.
        initializer_range=0.5,
    )
    return conf


def _configuration_json() -> dict[str, Any]:
    # FunASR's hub loader turns these relative names into absolute paths (without it the relative
    # `Qwen3-0.6B` would be looked up on the Hub).
    return {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            "tokenizer_conf": {"init_param_path": LLM_DIR_NAME},
            "llm_conf": {"init_param_path": LLM_DIR_NAME},
        },
    }


def write_llm_folder(llm_dir: Path, qwen_config: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> None:
    """`Qwen3-0.6B/`: config, generation config and tokenizer files only (the weights live in model.pt)."""
    llm_dir.mkdir(parents=True, exist_ok=True)
    (llm_dir / "config.json").write_text(json.dumps(qwen_config, indent=2))
    generation = {
        "bos_token_id": qwen_config["bos_token_id"],
        "eos_token_id": [qwen_config["eos_token_id"], tokenizer.pad_token_id],
        "pad_token_id": tokenizer.pad_token_id,
        "do_sample": False,
    }
    (llm_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tokenizer.save_pretrained(str(llm_dir))


def build_funasr_model(model_dir: Path, yaml_conf: dict[str, Any]) -> torch.nn.Module:
    """Instantiate FunASR's own `FunASRNano` for `yaml_conf` (random weights, LLM cast to llm_dtype)."""
    from funasr.models.fun_asr_nano.model import FunASRNano

    conf = copy.deepcopy(yaml_conf)
    conf["llm_conf"]["init_param_path"] = str(model_dir / LLM_DIR_NAME)
    frontend = conf["frontend_conf"]
    input_size = frontend["n_mels"] * frontend["lfr_m"]
    return FunASRNano(
        audio_encoder=conf["audio_encoder"],
        audio_encoder_conf=conf["audio_encoder_conf"],
        audio_adaptor=conf["audio_adaptor"],
        audio_adaptor_conf=conf["audio_adaptor_conf"],
        llm=conf["llm"],
        llm_conf=conf["llm_conf"],
        input_size=input_size,
    )


def write_original_checkpoint(
    out_dir: str | Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    store_dtype: torch.dtype = torch.bfloat16,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    yaml_conf: dict[str, Any] | None = None,
    qwen_config: dict[str, Any] | None = None,
) -> Path:
    """Build FunASR's `FunASRNano` with seeded random weights and save it in the original layout.

    size: "tiny" (seconds) or "real" (the Fun-ASR-Nano-2512 architecture, ~830M parameters).
    extra_tensors: tensors to add to model.pt that FunASR's model ignores (e.g. a CTC branch).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if size == "real":
        tokenizer = tokenizer or build_qwen3_tokenizer()
        yaml_conf = yaml_conf or copy.deepcopy(FUN_ASR_NANO_2512_YAML)
        qwen_config = qwen_config or dict(QWEN3_0_6B_CONFIG)
    elif size == "tiny":
        tokenizer = tokenizer or build_tiny_qwen_tokenizer()
        yaml_conf = yaml_conf or tiny_yaml()
        qwen_config = qwen_config or tiny_qwen3_config(tokenizer)
    else:
        raise ValueError(f"size must be 'tiny' or 'real', got {size!r}")

    write_llm_folder(out / LLM_DIR_NAME, qwen_config, tokenizer)
    (out / "config.yaml").write_text(yaml.safe_dump(yaml_conf, allow_unicode=True, sort_keys=False))
    (out / "configuration.json").write_text(json.dumps(_configuration_json(), indent=2))

    torch.manual_seed(seed)
    model = build_funasr_model(out, yaml_conf)
    state = {
        # Clone so that tied lm_head/embeddings are stored as two tensors, like the released file.
        key: value.detach().to(store_dtype if value.is_floating_point() else value.dtype).clone()
        for key, value in model.state_dict().items()
    }
    for key, value in (extra_tensors or {}).items():
        state[key] = value.to(store_dtype) if value.is_floating_point() else value
    torch.save({"state_dict": state}, out / "model.pt")
    logger.info("wrote %s (%d tensors)", out / "model.pt", len(state))
    return out
