#!/usr/bin/env python
"""Pretrain the bundled small Fun-ASR-Nano from scratch and ship it in the ORIGINAL FunASR layout.

    python examples/bundled/make_data.py --out outputs/bundled_data       # espeak-ng speech, ~6 min
    python examples/bundled/pretrain.py --data outputs/bundled_data        # ~30 min on 2 free CPU cores

1. A Qwen3 tokenizer restricted to the pretraining transcripts and FunASR's prompts
   (`build_qwen_tokenizer_for_texts`: the real Qwen3 BPE, a few thousand tokens).
2. FunASR's own `FunASRNano` with the small architecture below (`SMALL_*`), random weights, saved in the
   original layout (`write_original_checkpoint`) - the same path a real Fun-ASR-Nano folder takes.
3. Every parameter trained with this project's fine-tuning script (`examples/finetune.py`: no LoRA, nothing
   frozen) on the domain-A speech.
4. `export_funasr` writes the trained model back to the original layout (bf16, like the release) in
   `examples/bundled/model/`, then the fine-tuning sets are copied next to it (`examples/bundled/data/`).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from funasr_nano_hf.testing.funasr_checkpoint import (  # noqa: E402
    FUN_ASR_NANO_2512_YAML,
    QWEN3_0_6B_CONFIG,
    write_original_checkpoint,
)

# ~7.5M parameters: every structural feature of Fun-ASR-Nano-2512 (SAN-M encoder with its tp blocks,
# 2-layer Transformer adaptor, Qwen3 decoder with GQA and tied embeddings), small widths.
SMALL_ENCODER = {"output_size": 256, "attention_heads": 4, "linear_units": 512, "num_blocks": 5, "tp_blocks": 1}
SMALL_ADAPTOR = {"ffn_dim": 512, "llm_dim": 256, "encoder_dim": 256, "n_layer": 2}
SMALL_LLM = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
}


def small_configs(tokenizer) -> tuple[dict, dict]:
    conf = copy.deepcopy(FUN_ASR_NANO_2512_YAML)
    conf["audio_encoder_conf"].update(SMALL_ENCODER)
    conf["audio_adaptor_conf"].update(SMALL_ADAPTOR)
    qwen = dict(QWEN3_0_6B_CONFIG)
    qwen.update(
        SMALL_LLM,
        max_window_layers=SMALL_LLM["num_hidden_layers"],
        max_position_embeddings=4096,
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    return conf, qwen


def tokenizer_texts(manifests: list[Path]) -> list[str]:
    """Transcripts + every prompt FunASR builds (so prompts tokenise as with full Qwen3)."""
    from funasr_nano_hf.models.prompting import DEFAULT_SYSTEM_PROMPT, LANGUAGE_NAMES, instruction

    texts = [DEFAULT_SYSTEM_PROMPT, "system\n", "user\n", "assistant\n", "\n"]
    for language in [None, *LANGUAGE_NAMES]:
        texts += [instruction(language, itn=itn) for itn in (True, False)]
    for manifest in manifests:
        for line in manifest.read_text(encoding="utf-8").splitlines():
            texts.append(json.loads(line)["txt"])
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="outputs/bundled_data")
    parser.add_argument("--work", default="outputs/bundled_pretrain")
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--max_steps", type=int, default=2500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --work")
    parser.add_argument("--export_only", action="store_true", help="skip training: export --work's result and ship")
    args = parser.parse_args(argv)

    from funasr_nano_hf.conversion.export import export_funasr
    from funasr_nano_hf.testing.qwen_tokenizer import build_qwen_tokenizer_for_texts

    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    pretrain_train, pretrain_valid = data / "pretrain" / "train.jsonl", data / "pretrain" / "valid.jsonl"
    tokenizer = build_qwen_tokenizer_for_texts(tokenizer_texts([pretrain_train, pretrain_valid]))
    print(f"[pretrain] tokenizer: {len(tokenizer)} tokens")
    yaml_conf, qwen_config = small_configs(tokenizer)

    def initial_checkpoint(folder: Path, dtype: torch.dtype) -> Path:
        """The seeded FunASR-built initial model, stored in `dtype` (the same weights every call)."""
        write_original_checkpoint(
            folder, seed=args.seed, tokenizer=tokenizer, yaml_conf=yaml_conf, qwen_config=qwen_config, store_dtype=dtype
        )
        return folder

    if not args.export_only:
        import finetune

        init = initial_checkpoint(work / "init", torch.float32)
        finetune.main(
            [
                "--model_dir",
                str(init),
                "--train_data",
                str(pretrain_train),
                "--valid_data",
                str(pretrain_valid),
                "--output_dir",
                str(work / "train"),
                "--use_lora",
                "false",
                "--freeze_audio_encoder",
                "false",
                "--freeze_audio_adaptor",
                "false",
                "--freeze_llm",
                "false",
                "--llm_dtype",
                "fp32",
                "--max_steps",
                str(args.max_steps),
                "--max_epoch",
                "1000",
                "--lr",
                str(args.lr),
                "--lr_scheduler_type",
                "cosine",
                "--warmup_steps",
                str(args.max_steps // 20),
                "--weight_decay",
                "0.01",
                "--per_device_train_batch_size",
                str(args.batch_size),
                "--per_device_eval_batch_size",
                "50",
                "--max_eval_samples",
                "100",
                "--eval_max_new_tokens",
                "24",
                "--log_interval",
                "25",
                "--validate_interval",
                str(args.max_steps // 5),
                "--save_checkpoint_interval",
                str(args.max_steps // 5),
                "--keep_nbest_models",
                "2",
                "--avg_nbest_model",
                "1",
                "--early_stopping_patience",
                "0",
                "--use_cpu",
                "--dataloader_num_workers",
                "0",
                "--seed",
                str(args.seed),
                "--resume",
                str(args.resume).lower(),
            ]
        )
    model_out = out / "model"
    if model_out.exists():
        shutil.rmtree(model_out)
    # bf16 like the release: the base decides the stored dtypes.
    bf16_base = initial_checkpoint(work / "init_bf16", torch.bfloat16)
    export_funasr(work / "train" / "final", bf16_base, model_out)
    if (out / "data").exists():
        shutil.rmtree(out / "data")
    ship_data(data / "finetune" / "train.jsonl", out / "data", "train")
    ship_data(data / "finetune" / "heldout.jsonl", out / "data", "heldout")
    # a sample of the pretraining domain: shows what the model knows before any fine-tune
    ship_data(pretrain_valid, out / "data", "pretrain_domain", limit=60)
    size = sum(p.stat().st_size for p in model_out.rglob("*") if p.is_file())
    print(f"[pretrain] wrote {model_out} ({size / 2**20:.1f} MiB) and {out / 'data'}")


def ship_data(manifest: Path, target: Path, name: str, limit: int | None = None) -> None:
    """`manifest`'s clips as Ogg Opus in `target/name.jsonl` + `target/wav/name/` (the fine-tuning splits: 5 MB
    instead of 52 MB of 16-bit WAV; soundfile reads it)."""
    import soundfile as sf

    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()][:limit]
    for row in rows:
        audio, rate = sf.read(manifest.parent / row["wav"], dtype="float32")
        row["wav"] = f"wav/{name}/{Path(row['wav']).stem}.opus"
        (target / row["wav"]).parent.mkdir(parents=True, exist_ok=True)
        sf.write(target / row["wav"], audio, rate, format="OGG", subtype="OPUS")
    (target / f"{name}.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
