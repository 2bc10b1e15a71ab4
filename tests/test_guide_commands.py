"""FunASR's fine-tuning guide (docs/finetune_guide_zh.md) as written: its three ways to train and its data converter
run from the repository root with only the model/data/output paths changed (FunASR's `train_ds.py` replaced by
examples/finetune.py), on the tiny model built by FunASR's classes; each output folder holds what the guide lists.
Runs are shortened through each form's own mechanism (train.sh: its CONFIG_FILE variable; train.py: flags;
method 3: ++ overrides). examples/train.sh and --resume_from_checkpoint run here too.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import soundfile as sf
import yaml
from helpers import REPO, run, tts_subset

from funasr_nano_hf.training.arguments import parse_args, save_resolved_config
from funasr_nano_hf.training.checkpointing import COMPLETE_MARKER, complete_checkpoints

pytestmark = pytest.mark.slow  # real processes and real fine-tuning runs

GUIDE = "finetune_guide_zh.md"

# The guide's commands, verbatim.
GUIDE_CONVERT = """python scripts/convert_data_format.py \\
    --input data/train.jsonl \\
    --output data/train_converted.jsonl"""
GUIDE_METHOD_1 = "bash scripts/train.sh"
GUIDE_METHOD_2 = """python scripts/train.py \\
    --model_dir models/Fun-ASR-Nano-2512 \\
    --train_data data/train.jsonl \\
    --valid_data data/valid.jsonl \\
    --output_dir exp/funasr_nano_finetune \\
    --batch_size 4 \\
    --max_epoch 10 \\
    --learning_rate 0.0001"""
GUIDE_METHOD_3 = """python src/FunASR/funasr/bin/train_ds.py \\
    ++model="models/Fun-ASR-Nano-2512" \\
    ++train_data_set_list="data/train.jsonl" \\
    ++valid_data_set_list="data/valid.jsonl" \\
    ++output_dir="exp/funasr_nano_finetune" \\
    ++dataset_conf.batch_size=4 \\
    ++dataset_conf.batch_type="example" \\
    ++dataset_conf.num_workers=4 \\
    ++train_conf.max_epoch=10 \\
    ++train_conf.log_interval=10 \\
    ++train_conf.resume=true \\
    ++train_conf.validate_interval=1000 \\
    ++train_conf.save_checkpoint_interval=1000 \\
    ++train_conf.keep_nbest_models=5 \\
    ++train_conf.avg_nbest_model=3 \\
    ++train_conf.early_stopping_patience=3 \\
    ++optim_conf.lr=0.0001 \\
    ++optim_conf.weight_decay=0.0001 \\
    ++scheduler_conf.warmup_steps=500 \\
    ++llm_conf.use_lora=true \\
    ++llm_conf.lora_conf.r=8 \\
    ++llm_conf.lora_conf.lora_alpha=16 \\
    ++llm_conf.lora_conf.target_modules='["q_proj", "v_proj", "k_proj", "o_proj"]' \\
    ++llm_conf.lora_conf.lora_dropout=0.1 \\
    ++llm_conf.llm_dtype="fp16\""""

# What the guide says the output folder holds ("训练结果"). Its `checkpoint.pth` does not exist in FunASR either
# (checkpoints are model.pt.ep*): ours are complete `checkpoint-<step>` folders.
GUIDE_OUTPUT_FILES = ("train.log", "config.yaml")
# The guide's `model.pt  # 最终模型` (final model). Set True once the final model.pt is written (issue 10, part C).
CHECK_FINAL_MODEL_PT = True

# Shortening (8 training clips, batch 4: 2 steps): one epoch, validated and saved after step 2.
SHORT_METHOD_3 = " ++train_conf.max_epoch=1 ++train_conf.validate_interval=2 ++train_conf.save_checkpoint_interval=2"
SHORT_METHOD_2 = " --max_epoch 1 --validate_interval 2 --save_checkpoint_interval 2"


def _guide_text(shared_dir: Path) -> str | None:
    path = shared_dir / "docs" / GUIDE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def test_commands_are_the_guides(shared_dir):
    """The commands run below are copied from the guide (checked when the guide is at hand)."""
    text = _guide_text(shared_dir)
    if text is None:
        pytest.skip(f"{GUIDE} not in {shared_dir / 'docs'}")
    for command in (GUIDE_CONVERT, GUIDE_METHOD_1, GUIDE_METHOD_2, GUIDE_METHOD_3):
        assert command in text, command[:60]


def _with_paths(command: str, model: Path, data: Path, out: Path, train: str = "train.jsonl") -> str:
    """Only the paths changed (and FunASR's script replaced by ours)."""
    for guide_path, ours in (
        ("src/FunASR/funasr/bin/train_ds.py", "examples/finetune.py"),
        ("models/Fun-ASR-Nano-2512", str(model)),
        ("data/train.jsonl", str(data / train)),
        ("data/valid.jsonl", str(data / "valid.jsonl")),
        ("exp/funasr_nano_finetune", str(out)),
    ):
        command = command.replace(guide_path, ours)
    return command


def _shell(command: str, **env: str) -> str:
    """`command` in bash from the repository root, `python` being this interpreter."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return run(["bash", "-c", f"cd {REPO} && {command}"], env={"PATH": path, **env})


def _check_guide_outputs(out: Path) -> dict:
    """The guide's output list, and a config.yaml that --config reads back into the same options; returns it."""
    for name in GUIDE_OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "loss" in (out / "train.log").read_text(encoding="utf-8")
    assert complete_checkpoints(out), f"no complete checkpoint in {out}"
    if CHECK_FINAL_MODEL_PT:
        assert (out / "model.pt").is_file()
    written = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    again = out.parent / f"{out.name}_config_again.yaml"
    save_resolved_config(again, *parse_args(["--config", str(out / "config.yaml")]))
    assert yaml.safe_load(again.read_text(encoding="utf-8")) == written
    return written


def _check_guide_values(config: dict, batch_size: int = 4) -> None:
    """The guide's settings reached the run (config.yaml holds the values used)."""
    model, data, finetune, training = (config[group] for group in ("model", "data", "finetune", "training"))
    assert (training["learning_rate"], training["weight_decay"], training["warmup_steps"]) == (1e-4, 1e-4, 500)
    assert (training["per_device_train_batch_size"], data["batch_type"]) == (batch_size, "example")
    assert (model["use_lora"], model["lora_r"], model["lora_alpha"], model["lora_dropout"]) == (True, 8, 16, 0.1)
    assert set(model["lora_target_modules"].split(",")) == {"q_proj", "v_proj", "k_proj", "o_proj"}
    assert (finetune["keep_nbest_models"], finetune["avg_nbest_model"], finetune["early_stopping_patience"]) == (
        5,
        3,
        3,
    )
    assert training["logging_steps"] == 10 and training["num_train_epochs"] == 1  # shortened from 10


@pytest.fixture(scope="module")
def data_dir(shared_dir, tmp_path_factory) -> Path:
    return tts_subset(shared_dir, tmp_path_factory.mktemp("guide_data"), train=8, valid=2)


# ---------------------------------------------------------------------------------------------------------
# data conversion
# ---------------------------------------------------------------------------------------------------------
def _guide_converter_lengths(wav: str, text: str) -> tuple[int, int]:
    """The guide converter's own formulas (scripts/convert_data_format.py of the guide)."""
    import librosa

    return int(len(librosa.load(wav, sr=16000)[0]) / 16000 * 100), len(text)


def test_convert_data_format_script(data_dir, tmp_path):
    """The guide's converter command: {"key","wav","txt"} -> {"source","target","source_len","target_len"} in its
    units (10 ms duration units, characters), also for audio at other sample rates; readable back."""
    from funasr_nano_hf.data.readers import read_manifest

    rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    for rate in (8000, 44100):  # the first clip's samples written at other rates (other durations)
        samples, _ = sf.read(data_dir / rows[0]["wav"])
        sf.write(tmp_path / f"clip_{rate}.wav", samples, rate)
        rows.append({"key": f"clip_{rate}", "wav": str(tmp_path / f"clip_{rate}.wav"), "txt": "二 three, 四"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "data" / "wav").symlink_to(data_dir / "wav")
    command = GUIDE_CONVERT.replace("data/", f"{tmp_path}/data/")
    _shell(command)
    converted = [json.loads(line) for line in (tmp_path / "data" / "train_converted.jsonl").read_text().splitlines()]
    assert [line["key"] for line in converted] == [row["key"] for row in rows]
    for row, line in zip(rows, converted):
        assert set(line) == {"key", "source", "target", "source_len", "target_len"}
        wav = str(Path(tmp_path / "data", row["wav"]))
        assert (line["source_len"], line["target_len"]) == _guide_converter_lengths(wav, row["txt"]), row["key"]
        assert line["target"] == row["txt"] and Path(line["source"]).resolve() == Path(wav).resolve()
    back = read_manifest(tmp_path / "data" / "train_converted.jsonl")
    assert [(r.key, r.text) for r in back.records] == [(row["key"], row["txt"]) for row in rows]

    _shell(command.replace("train_converted", "train_fast") + " --no-calculate-lengths")
    fast = [json.loads(line) for line in (tmp_path / "data" / "train_fast.jsonl").read_text().splitlines()]
    assert [set(line) for line in fast] == [{"key", "source", "target"}] * len(rows)


def test_convert_data_cli_length_units(data_dir, tmp_path):
    """`funasr-nano-hf convert-data`: characters need no tokenizer (the guide's units, default for source-target);
    token lengths (default for ChatML) need the tokenizer and say so."""
    from funasr_nano_hf.cli.main import main

    source = str(data_dir / "valid.jsonl")
    assert (
        main(["convert-data", "--input", source, "--output", str(tmp_path / "st.jsonl"), "--to", "source-target"]) == 0
    )
    first = json.loads((tmp_path / "st.jsonl").read_text().splitlines()[0])
    row = json.loads((data_dir / "valid.jsonl").read_text().splitlines()[0])
    assert first["target_len"] == len(row["txt"])
    with pytest.raises(SystemExit, match="--lengths tokens needs --tokenizer"):
        main(["convert-data", "--input", source, "--output", str(tmp_path / "c.jsonl"), "--to", "chatml"])
    assert main(["convert-data", "--input", source, "--output", str(tmp_path / "c.jsonl"), "--lengths", "chars"]) == 0
    assert json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])["text_length"] == len(row["txt"])


# ---------------------------------------------------------------------------------------------------------
# the three ways to train
# ---------------------------------------------------------------------------------------------------------
def test_method_1_train_sh(tiny_original_dir, data_dir, tmp_path):
    """`bash scripts/train.sh`, paths in its variables (environment), on data converted by the guide's converter;
    shortened through its CONFIG_FILE (a copy of the guide's settings with one short epoch)."""
    _shell(f"python scripts/convert_data_format.py --input {data_dir}/train.jsonl --output {data_dir}/train_st.jsonl")
    config = yaml.safe_load((REPO / "examples" / "conf" / "train_funasr_nano.yaml").read_text(encoding="utf-8"))
    config["train_conf"].update(max_epoch=1, validate_interval=2, save_checkpoint_interval=2)
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / "exp"
    _shell(
        GUIDE_METHOD_1,
        MODEL_DIR=str(tiny_original_dir),
        TRAIN_DATA=str(data_dir / "train_st.jsonl"),
        VALID_DATA=str(data_dir / "valid.jsonl"),
        OUTPUT_DIR=str(out),
        CONFIG_FILE=str(tmp_path / "short.yaml"),
        PYTHON=sys.executable,
    )
    written = _check_guide_outputs(out)
    _check_guide_values(written)
    assert written["model"]["llm_dtype"] == "fp16" and written["data"]["train_data"] == [
        str(data_dir / "train_st.jsonl")
    ]


def test_method_2_train_py(tiny_original_dir, data_dir, tmp_path):
    out = tmp_path / "exp"
    _shell(_with_paths(GUIDE_METHOD_2, tiny_original_dir, data_dir, out) + SHORT_METHOD_2)
    written = _check_guide_outputs(out)
    _check_guide_values(written)
    assert written["data"]["valid_data"] == [str(data_dir / "valid.jsonl")]


@pytest.fixture(scope="module")
def method_3_run(tiny_original_dir, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("method3") / "exp"
    _shell(_with_paths(GUIDE_METHOD_3, tiny_original_dir, data_dir, out) + SHORT_METHOD_3)
    return out


def test_method_3_funasr_overrides(method_3_run):
    written = _check_guide_outputs(method_3_run)
    _check_guide_values(written)
    assert written["model"]["llm_dtype"] == "fp16" and written["finetune"]["resume"] is True
    assert (written["training"]["eval_steps"], written["training"]["save_steps"]) == (2, 2)


def test_resume_from_checkpoint_path(method_3_run, tiny_original_dir, data_dir, tmp_path):
    """transformers' --resume_from_checkpoint PATH continues from that checkpoint's step (into another folder);
    an incomplete one is refused, as --resume refuses it."""
    from helpers import finetune_cmd

    checkpoint = complete_checkpoints(method_3_run)[2]
    torn = tmp_path / "torn"
    shutil.copytree(checkpoint, torn)
    (torn / COMPLETE_MARKER).unlink()
    common = "--max_epoch 2 --validate_interval 2 --save_checkpoint_interval 2 --llm_dtype fp16 --use_cpu".split()
    output = run(
        finetune_cmd(tiny_original_dir, data_dir, tmp_path / "bad", *common, "--resume_from_checkpoint", torn),
        returncode=1,
    )
    assert f"--resume_from_checkpoint {torn}: not a complete checkpoint" in output
    out = tmp_path / "continued"
    run(finetune_cmd(tiny_original_dir, data_dir, out, *common, "--resume_from_checkpoint", checkpoint))
    assert sorted(complete_checkpoints(out)) == [4]  # steps 1-2 came from the checkpoint
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry] == [2, 4]


def test_examples_train_sh(tiny_original_dir, data_dir, tmp_path):
    """examples/train.sh (examples/configs/lora.yaml) with the command line over the file: --batch_size 2 wins over
    the file's per_device_train_batch_size 4; the file's other values stay."""
    out = tmp_path / "out"
    _shell(
        "bash examples/train.sh --batch_size 2 --max_epoch 1 --validate_interval 2 --save_checkpoint_interval 2",
        MODEL_DIR=str(tiny_original_dir),
        TRAIN_DATA=str(data_dir / "train.jsonl"),
        VALID_DATA=str(data_dir / "valid.jsonl"),
        OUTPUT_DIR=str(out),
        VIRTUAL_ENV=sys.prefix,  # the active environment, not scripts/venv.sh's
    )
    written = _check_guide_outputs(out)
    assert written["training"]["per_device_train_batch_size"] == 2 and written["data"]["batch_size"] == 2
    assert written["training"]["per_device_eval_batch_size"] == 8  # from lora.yaml
    assert sorted(complete_checkpoints(out)) == [2, 4]  # 8 clips in batches of 2
