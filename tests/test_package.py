"""The package's shape: FunASR is an optional extra, used only by `funasr_nano_hf.testing`.

`pip install funasr-nano-hf` (no `[funasr]`) must import, load the original folder, fine-tune and transcribe:
one test proves it in a subprocess where importing `funasr` raises, another fails on any import of `funasr`
outside `funasr_nano_hf/testing/` and `inference/fsmn_vad.py` (FunASR's own fsmn-vad, imported lazily and only
when the user gives a VAD model folder; without funasr that option says to install the extra).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import BLOCK_FUNASR, BUNDLED_DATA, FINETUNE, REPO

PACKAGE = REPO / "funasr_nano_hf"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


# The one product module allowed to import funasr: the adapter to FunASR's fsmn-vad for `--vad-model`. FunASR is
# the optional extra there, imported lazily inside functions and only when a VAD folder is given.
OPTIONAL_FUNASR_MODULES = {PACKAGE / "inference" / "fsmn_vad.py"}


def test_only_the_testing_package_imports_funasr():
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted(PACKAGE.rglob("*.py"))
        if PACKAGE / "testing" not in path.parents
        and path not in OPTIONAL_FUNASR_MODULES
        and any(name == "funasr" or name.startswith("funasr.") for name in _imported_modules(path))
    ]
    assert offenders == [], f"the product imports funasr (an optional extra): {offenders}"


def test_the_vad_adapter_imports_funasr_only_lazily():
    for path in OPTIONAL_FUNASR_MODULES:
        body = ast.parse(path.read_text(encoding="utf-8")).body
        top = {alias.name for node in body if isinstance(node, ast.Import) for alias in node.names}
        top |= {node.module for node in body if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(name.split(".")[0] == "funasr" for name in top), f"{path}: funasr imported at module level"


@pytest.mark.slow
def test_load_finetune_transcribe_without_funasr(tmp_path):
    rows = [json.loads(line) for line in (BUNDLED_DATA / "heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    for name, subset in (("train.jsonl", rows[:8]), ("valid.jsonl", rows[8:10])):
        lines = [json.dumps({**row, "wav": str(BUNDLED_DATA / row["wav"])}, ensure_ascii=False) for row in subset]
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    script = BLOCK_FUNASR + textwrap.dedent(f"""
        import runpy
        import funasr_nano_hf
        from funasr_nano_hf.data.audio import load_audio
        from peft import PeftModel

        model_dir = {str(REPO / "examples" / "bundled" / "model")!r}
        sys.argv = ["finetune.py", "--model_dir", model_dir, "--train_data", {str(tmp_path / "train.jsonl")!r},
                    "--valid_data", {str(tmp_path / "valid.jsonl")!r}, "--output_dir", {str(out)!r},
                    "--max_steps", "2", "--batch_size", "4", "--validate_interval", "2",
                    "--save_checkpoint_interval", "2", "--eval_max_new_tokens", "4", "--use_cpu", "true",
                    "--early_stopping_patience", "0", "--num_workers", "0"]
        runpy.run_path({str(FINETUNE)!r}, run_name="__main__")
        model, processor = funasr_nano_hf.load_pretrained(model_dir)
        model = PeftModel.from_pretrained(model, {str(out / "final")!r}).eval()
        waveform, _ = load_audio({str(BUNDLED_DATA / rows[0]["wav"])!r})
        texts = funasr_nano_hf.transcribe(model, processor, [waveform], max_new_tokens=8)
        assert "funasr" not in sys.modules, sorted(m for m in sys.modules if m.startswith("funasr."))
        print("TRANSCRIPT", repr(texts[0]))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "TRANSCRIPT" in result.stdout
    assert (out / "final" / "adapter_model.safetensors").is_file()
