"""push_to_hub of the adapter with our model card. No network here: the Hub API object is replaced by a
recorder at the one place the Trainer calls it, and the test checks what would be uploaded."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from helpers import REPO, tts_subset


class RecordingHubApi:
    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.repos.append(repo_id)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        ignored = kwargs.get("ignore_patterns") or []
        card = Path(folder_path, "README.md")
        self.uploads.append(
            {
                "repo_id": repo_id,
                "files": files,
                "ignore": ignored,
                "card": card.read_text(encoding="utf-8") if card.is_file() else None,
            }
        )

        class Done:
            def done(self):
                return True

        return Done()


@pytest.mark.slow
def test_push_to_hub_uploads_adapter_and_card(tiny_original_dir, shared_dir, tmp_path, monkeypatch):
    import transformers.trainer

    api = RecordingHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    data = tts_subset(shared_dir, tmp_path / "data", train=16, valid=4)
    out = tmp_path / "out"
    argv = [
        "--model_dir",
        str(tiny_original_dir),
        "--train_data",
        str(data / "train.jsonl"),
        "--valid_data",
        str(data / "valid.jsonl"),
        "--output_dir",
        str(out),
        "--max_epoch",
        "1",
        "--batch_size",
        "8",
        "--validate_interval",
        "2",
        "--save_checkpoint_interval",
        "2",
        "--eval_max_new_tokens",
        "4",
        "--use_cpu",
        "--early_stopping_patience",
        "0",
        "--cache_frozen_audio",
        "true",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "someone/fun-asr-nano-lora",
        "--hub_strategy",
        "end",
    ]
    monkeypatch.setattr(sys, "argv", ["finetune.py", *argv])
    runpy.run_path(str(REPO / "examples" / "finetune.py"), run_name="__main__")

    assert api.repos == ["someone/fun-asr-nano-lora"]
    final = api.uploads[-1]
    assert final["repo_id"] == "someone/fun-asr-nano-lora"
    assert "adapter_model.safetensors" in final["files"] and "adapter_config.json" in final["files"]
    assert "processor_config.json" in final["files"] and "tokenizer.json" in final["files"]
    card = final["card"]
    assert card.startswith("---\n") and f"base_model: {tiny_original_dir}" in card
    assert "library_name: peft" in card and "funasr_nano_hf.mixed_v1" in card
    assert "| eval_cer |" in card and "train.jsonl — 16 utterances" in card
    assert "| lora | r=8, alpha=16, dropout=0.1, targets=q_proj,k_proj,v_proj,o_proj |" in card
