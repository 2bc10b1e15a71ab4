"""push_to_hub and credentials, on a real fine-tune (examples/finetune.py in its own process).

No network here: the Hub API object is replaced by a recorder at the one place the Trainer reaches it
(`transformers.trainer.hf_api`); the recorder applies the allow/ignore patterns exactly as huggingface_hub does,
so the tests see what would be uploaded. The run gets `--hub_token` and `HF_TOKEN` canaries and writes
TensorBoard events; afterwards no byte of any file it produced, nor of its console, may hold either canary.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import FINETUNE, tts_subset
from transformers import TrainingArguments

from funasr_nano_hf.training.secrets import is_secret_name, protect_secrets, redact

HUB_CANARY = "hf_CANARYhubtoken0123456789abcdef"
ENV_CANARY = "hf_CANARYenvtoken9876543210fedcba"

RECORDER = """
import json, os, runpy, sys
from pathlib import Path

import transformers.trainer
from huggingface_hub import RepoUrl
from huggingface_hub.utils import filter_repo_objects

uploads = []


class RecordingHubApi:
    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, path_in_repo=None,
                      token=None, **kwargs):
        paths = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
        files = list(filter_repo_objects(paths, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        card = Path(folder_path, "README.md")
        uploads.append({"repo_id": repo_id, "path_in_repo": path_in_repo, "files": files,
                        "token_is_the_hub_token": token == os.environ["EXPECTED_TOKEN"],
                        "card": card.read_text(encoding="utf-8") if card.is_file() and not path_in_repo else None})

        class Done:
            def done(self):
                return True

        return Done()


transformers.trainer.hf_api = lambda: RecordingHubApi()
sys.argv = ["finetune.py", *json.loads(os.environ["FINETUNE_ARGS"])]
try:
    runpy.run_path(os.environ["FINETUNE"], run_name="__main__")
finally:
    Path(os.environ["UPLOADS"]).write_text(json.dumps(uploads))
"""


@pytest.fixture(scope="module")
def pushed_run(tiny_original_dir, shared_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("push")
    data = tts_subset(shared_dir, root / "data", train=16, valid=4)
    out = root / "out"
    args = [
        "--model_dir", str(tiny_original_dir), "--train_data", str(data / "train.jsonl"),
        "--valid_data", str(data / "valid.jsonl"), "--output_dir", str(out),
        *"--max_epoch 1 --batch_size 8 --validate_interval 1 --save_checkpoint_interval 1 --eval_max_new_tokens 4 "
        "--use_cpu --early_stopping_patience 0 --cache_frozen_audio true --report_to tensorboard "
        "--push_to_hub true --hub_model_id someone/fun-asr-nano-lora".split(),
        "--hub_token", HUB_CANARY,
    ]  # fmt: skip
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1", "HF_TOKEN": ENV_CANARY, "EXPECTED_TOKEN": HUB_CANARY,
        "FINETUNE": str(FINETUNE), "FINETUNE_ARGS": json.dumps(args), "UPLOADS": str(root / "uploads.json"),
    }  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RECORDER)], capture_output=True, env=env, timeout=900, cwd=root
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console.decode(errors="replace")[-6000:]
    uploads = json.loads((root / "uploads.json").read_text())
    return {"out": out, "console": console, "uploads": uploads, "root": root}


@pytest.mark.slow
def test_push_uploads_the_model_repository_only(pushed_run):
    uploads = pushed_run["uploads"]
    assert uploads and all(u["repo_id"] == "someone/fun-asr-nano-lora" for u in uploads)
    assert all(u["token_is_the_hub_token"] for u in uploads)  # the token still authenticates every upload
    assert len(uploads) >= 3  # one per checkpoint (hub_strategy every_save) and the final push
    for upload in uploads:
        assert upload["path_in_repo"] is None  # no checkpoint folder: hub_strategy did not ask for one
        files = set(upload["files"])
        assert not any("/" in name for name in files), files  # nothing from checkpoint-*/, final/, model_avg/
        assert {"adapter_model.safetensors", "adapter_config.json", "training_args.bin"} <= files, files
        assert not files & {"optimizer.pt", "scheduler.pt", "config.yaml", "train.log", "nbest.json"}, files
    final = set(uploads[-1]["files"])
    assert {"README.md", "processor_config.json", "tokenizer.json", "all_results.json"} <= final


@pytest.mark.slow
def test_push_card_describes_the_run(pushed_run, tiny_original_dir):
    from huggingface_hub import ModelCard

    card = pushed_run["uploads"][-1]["card"]
    data = ModelCard(card, ignore_metadata_errors=False).data  # valid Hub metadata
    assert data.base_model is None and str(tiny_original_dir) in card  # a local base: in the text only
    assert data.library_name == "peft" and data.pipeline_tag == "automatic-speech-recognition"
    assert "funasr_nano_hf.mixed_v1" in card and {"eval_cer", "eval_wer", "eval_mer"} <= set(
        f"eval_{r.metric_type}" for r in data.eval_results
    )
    assert "| eval_cer |" in card and "train.jsonl — 16 utterances" in card
    assert "| lora | r=8, alpha=16, dropout=0.1, targets=q_proj,k_proj,v_proj,o_proj |" in card
    assert "| trained | LoRA |" in card
    # final/ carries the same kind of card (not peft's blank template) and names its base for AutoPeftModel
    final = pushed_run["out"] / "final"
    assert ModelCard.load(final / "README.md").data.library_name == "peft"
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_original_dir.resolve())


@pytest.mark.slow
def test_no_credential_in_any_artefact_or_the_console(pushed_run):
    out: Path = pushed_run["out"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(".tfevents." in p.name for p in files)
    for canary in (HUB_CANARY, ENV_CANARY):
        leaks = [str(p.relative_to(out)) for p in files if canary.encode() in p.read_bytes()]
        assert leaks == [], f"{canary[:12]}... written to {leaks}"
        assert canary.encode() not in pushed_run["console"]
    # training_args.bin still loads as transformers expects on resume; its token is gone
    args = torch.load(out / "final" / "training_args.bin", weights_only=False)
    assert type(args) is TrainingArguments and args.hub_token is None and args.hub_model_id


def test_protected_arguments_keep_their_token_in_memory_and_drop_it_when_pickled(tmp_path):
    args = protect_secrets(TrainingArguments(str(tmp_path), hub_token=HUB_CANARY, report_to=[]))
    assert isinstance(args, TrainingArguments) and args.hub_token == HUB_CANARY
    assert HUB_CANARY.encode() not in pickle.dumps(args)
    torch.save(args, tmp_path / "args.bin")
    loaded = torch.load(tmp_path / "args.bin", weights_only=False)
    assert type(loaded) is TrainingArguments and loaded.hub_token is None and loaded.output_dir == str(tmp_path)
    import copy

    assert copy.deepcopy(args).hub_token == HUB_CANARY  # copies in memory still authenticate
    assert protect_secrets(args) is args


def test_secret_names_and_redaction():
    assert all(map(is_secret_name, ["hub_token", "push_to_hub_token", "api_key", "db_password", "client_secret"]))
    assert not any(map(is_secret_name, ["max_tokens", "num_tokens", "eval_max_new_tokens", "hub_model_id"]))
    tree = {"training": {"hub_token": "x", "push_to_hub_token": None, "lr": 1}, "data": [{"api_key": "y"}]}
    assert redact(tree) == {
        "training": {"hub_token": "<redacted>", "push_to_hub_token": None, "lr": 1},
        "data": [{"api_key": "<redacted>"}],
    }
