"""The fuzzing matrix: every kind of bad input (tests/fault/README.md lists them with their outcome) generated
from the bundled clips, run through check-data, transcribe and fine-tuning's data stage, each outcome asserted;
one short real fine-tune over all of them at once (--on_bad_data skip) checks the counts in train.log; and
property-based fuzzing of the manifest readers (hypothesis): never an unhandled exception, never a silent drop.

Outcome classes: ``error`` (named with file:line, the record refused; check-data exits 1), ``warning`` (named
with file:line and counted, the record used), ``handled`` (nothing to report: the input is fine for that
command), ``stops`` (transcribe stops with an error naming the file: one bad file among many is issue 11's
"transcribe keeps going" work).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import BUNDLED_DATA, REPO, RunsCode, finetune_cmd, run
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from funasr_nano_hf.cli.main import main as cli_main
from funasr_nano_hf.data.audio import load_audio
from funasr_nano_hf.data.checks import check_manifests
from funasr_nano_hf.data.featurize import DataConfig, build_dataset
from funasr_nano_hf.data.readers import read_manifest
from funasr_nano_hf.errors import DataError

BUNDLED_MODEL = REPO / "examples" / "bundled" / "model"


@dataclass(frozen=True)
class Kind:
    """One kind of bad input: its manifest line (built by `build`), and what each command must make of it:
    (outcome class, text the message must contain)."""

    name: str
    check: tuple[str, str]
    featurize: tuple[str, str]  # ("error", drop reason) | ("warning", note) | ("handled", "")
    transcribe: tuple[str, str]  # ("stops", reason) | ("reported", reason) | ("handled", "")
    line: int = 2  # the manifest line the problem is on (a good line comes first: it sets the format)


KINDS = [
    # -- round 1 (tests/data/test_checks.py's broken folder) -------------------------------------------------
    Kind("missing_audio", ("error", "missing audio file"), ("error", "unreadable audio"), ("stops", "missing audio")),
    Kind("corrupt_audio", ("error", "unreadable or corrupt"), ("error", "unreadable audio"), ("stops", "corrupt")),
    Kind("zero_length", ("error", "zero-length audio"), ("error", "unreadable audio"), ("stops", "zero-length")),
    Kind("sr8k", ("warning", "8000 Hz: will be resampled"), ("warning", "resampled from 8000"), ("handled", "")),
    Kind("sr44k", ("warning", "44100 Hz: will be resampled"), ("warning", "resampled from 44100"), ("handled", "")),
    Kind("sr48k", ("warning", "48000 Hz: will be resampled"), ("warning", "resampled from 48000"), ("handled", "")),
    Kind("stereo", ("warning", "2 channels: will be downmixed"), ("warning", "downmixed 2 channels"), ("handled", "")),
    Kind("blank_text", ("error", "empty or whitespace-only"), ("error", "manifest error"), ("reported", "empty")),
    Kind("malformed_json", ("error", "malformed JSON"), ("error", "manifest error"), ("reported", "malformed JSON")),
    Kind("missing_field", ("error", "missing field"), ("error", "manifest error"), ("reported", "missing field")),
    Kind("duplicate_key", ("error", "duplicate key"), ("error", "manifest error"), ("reported", "duplicate")),
    Kind(
        "long_audio", ("error", "is longer than 20"), ("error", "audio longer than max_source_length"), ("handled", "")
    ),
    Kind("long_text", ("error", "exceeds 200"), ("error", "transcript longer than max_target_length"), ("handled", "")),
    Kind("not_utf8", ("error", "not UTF-8"), ("error", "manifest error"), ("reported", "not UTF-8")),
    # -- round 2 ------------------------------------------------------------------------------------------------
    Kind("digital_silence", ("error", "digital silence"), ("error", "bad audio content"), ("stops", "digital silence")),
    Kind("near_silence", ("warning", "near-silence"), ("warning", "near-silence"), ("handled", "")),
    Kind("nan_samples", ("error", "NaN/inf sample"), ("error", "bad audio content"), ("stops", "NaN/inf")),
    Kind("truncated_wav", ("error", "truncated file"), ("error", "bad audio content"), ("stops", "truncated file")),
    Kind("clipping", ("warning", "clipping"), ("warning", "clipping"), ("handled", "")),
    Kind("special_token_text", ("error", "<|im_end|>"), ("error", "special tokens in transcript"), ("handled", "")),
    Kind(
        "placeholder_text",
        ("error", "<|object_ref_start|>"),
        ("error", "special tokens in transcript"),
        ("handled", ""),
    ),
    Kind("wav_not_a_string", ("error", "expected a string"), ("error", "manifest error"), ("reported", "expected")),
    Kind("text_not_a_string", ("error", "expected a string"), ("error", "manifest error"), ("reported", "expected")),
    Kind("kaldi_pipe", ("error", "not supported: pipe/ark"), ("error", "manifest error"), ("reported", "pipe/ark"), 1),
    Kind("kaldi_ark", ("error", "not supported: pipe/ark"), ("error", "manifest error"), ("reported", "pipe/ark"), 1),
]
BY_NAME = {kind.name: kind for kind in KINDS}


def _row(key: str, wav, txt="今天天气很好") -> bytes:
    return json.dumps({"key": key, "wav": wav, "txt": txt}, ensure_ascii=False).encode()


def _write_kind(folder: Path, name: str, clip: np.ndarray) -> list[bytes] | tuple[bytes, bytes]:
    """Write the kind's files into `folder`; its manifest lines (the bad one at `Kind.line`). Kaldi kinds
    return (wav.scp, text)."""
    rate = 16000
    wav = f"{name}.wav"
    lines = {
        "missing_audio": lambda: [_row(name, "nowhere.wav")],
        "blank_text": lambda: [_row(name, "good.wav", "   ")],
        "malformed_json": lambda: [b'{"key": "malformed", "wav": "good.wav", "txt": '],
        "missing_field": lambda: [json.dumps({"key": name, "wav": "good.wav"}).encode()],
        "duplicate_key": lambda: [_row("dup", "good.wav", "重复")],
        "long_text": lambda: [_row(name, "good.wav", "长" * 300)],
        "not_utf8": lambda: [b'{"key": "latin1", "wav": "good.wav", "txt": "caf\xe9"}'],
        "special_token_text": lambda: [_row(name, "good.wav", "好的<|im_end|><|im_start|>system")],
        "placeholder_text": lambda: [_row(name, "good.wav", "听<|object_ref_start|>这里")],
        "wav_not_a_string": lambda: [_row(name, 5)],
        "text_not_a_string": lambda: [_row(name, "good.wav", 5)],
    }
    if name in lines:
        return lines[name]()
    if name in ("kaldi_pipe", "kaldi_ark"):
        entry = "sox good.wav -t wav - |" if name == "kaldi_pipe" else "feats.ark:1234"
        return (f"{name} {entry}\ngood_{name} good.wav\n".encode(), f"{name} 你好\ngood_{name} 今天天气很好\n".encode())
    path = folder / wav
    if name == "corrupt_audio":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif name == "zero_length":
        sf.write(path, np.zeros(0, dtype=np.float32), rate)
    elif name.startswith("sr"):
        import torch
        import torchaudio

        target = {"sr8k": 8000, "sr44k": 44100, "sr48k": 48000}[name]
        sf.write(path, torchaudio.functional.resample(torch.from_numpy(clip), rate, target).numpy(), target)
    elif name == "stereo":
        sf.write(path, np.stack([clip, clip * 0.5], axis=1), rate)
    elif name == "long_audio":
        sf.write(path, np.tile(clip, int(np.ceil(21 * rate / len(clip)))), rate)
    elif name == "digital_silence":
        sf.write(path, np.zeros_like(clip), rate)
    elif name == "near_silence":
        sf.write(path, clip * 1e-4, rate, subtype="FLOAT")
    elif name == "nan_samples":
        bad = clip.copy()
        bad[len(bad) // 2] = np.nan
        sf.write(path, bad, rate, subtype="FLOAT")
    elif name == "truncated_wav":
        sf.write(path, clip, rate, subtype="PCM_16")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif name == "clipping":
        sf.write(path, np.clip(clip * 20, -1, 1), rate)
    else:
        raise AssertionError(name)
    return [_row(name, wav)]


@pytest.fixture(scope="module")
def matrix_dir(tmp_path_factory) -> Path:
    """Per kind: `<kind>.jsonl` (or `<kind>.scp` + `<kind>.txt`): a good line and the bad one. `all.jsonl`:
    every JSONL kind's bad line and 6 good clips (the fine-tuning run's input)."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    rows = [json.loads(line) for line in (BUNDLED_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    clip, _ = load_audio(str(BUNDLED_DATA / rows[0]["wav"]))
    sf.write(folder / "good.wav", clip, 16000)
    combined: list[bytes] = []
    for kind in KINDS:
        built = _write_kind(folder, kind.name, clip)
        if isinstance(built, tuple):
            (folder / f"{kind.name}.scp").write_bytes(built[0])
            (folder / f"{kind.name}.txt").write_bytes(built[1])
            continue
        good = _row("dup" if kind.name == "duplicate_key" else f"good_{kind.name}", "good.wav")
        (folder / f"{kind.name}.jsonl").write_bytes(b"\n".join([good, *built]) + b"\n")
        combined += [good, *built] if kind.name == "duplicate_key" else built
    for row in rows[:6]:  # real clips to train on
        shutil.copy(BUNDLED_DATA / row["wav"], folder / Path(row["wav"]).name)
        combined.append(_row(row["key"], Path(row["wav"]).name, row["txt"]))
    (folder / "all.jsonl").write_bytes(b"\n".join(combined) + b"\n")
    return folder


def _manifest(folder: Path, kind: Kind) -> tuple[str, str | None]:
    scp = folder / f"{kind.name}.scp"
    return (str(scp), str(folder / f"{kind.name}.txt")) if scp.is_file() else (str(folder / f"{kind.name}.jsonl"), None)


# -- check-data -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_check_data(matrix_dir, kind, capsys):
    manifest, text = _manifest(matrix_dir, kind)
    report = check_manifests([manifest], text_paths=[text])
    severity, reason = kind.check
    named = [p for p in report.problems if reason in p.reason and p.source == f"{manifest}:{kind.line}"]
    assert named and named[0].severity == severity, report.format()
    assert report.read == 2  # nothing silently dropped: the bad line and the good one, each counted
    assert report.usable == (1 if severity == "error" else 2), report.format()
    argv = ["check-data", manifest] + (["--text", text] if text else [])
    assert cli_main(argv) == (1 if severity == "error" else 0)
    assert reason in capsys.readouterr().out


# -- fine-tuning's data stage ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundled_processor():
    from funasr_nano_hf import load_pretrained

    return load_pretrained(BUNDLED_MODEL)


@pytest.fixture(scope="module")
def featurized(matrix_dir, bundled_processor, tmp_path_factory):
    """Every kind through `build_dataset` with on_bad_data skip: the dataset and report a fine-tune gets."""
    config = DataConfig(on_bad_data="skip", cache_dir=str(tmp_path_factory.mktemp("cache")))
    manifests = [_manifest(matrix_dir, kind) for kind in KINDS]
    # precomputed: the data stage decodes every clip (on the fly, the loader meets them: the fine-tune kind below)
    return build_dataset(
        [m for m, _ in manifests], bundled_processor[1], config, [t for _, t in manifests], precompute_features=True
    )


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_featurize_skip(featurized, matrix_dir, kind):
    dataset, report = featurized
    manifest, _ = _manifest(matrix_dir, kind)
    outcome, reason = kind.featurize
    kept = set(dataset["key"])
    problems = [p for p in report.problems if p.source == f"{manifest}:{kind.line}"]
    key = {"duplicate_key": None, "malformed_json": None, "not_utf8": None}.get(kind.name, kind.name)
    if outcome == "error":
        assert key not in kept or key is None
        if reason == "manifest error":
            assert any(p.severity == "error" for p in problems), report.format()
        else:
            assert report.dropped[reason if reason in report.dropped else _label(report, reason)] >= 1
    else:
        assert key in kept
        assert outcome == "handled" or any(reason in p.reason and p.severity == "warning" for p in problems)


def _label(report, reason: str) -> str:
    return next(label for label in report.dropped if label.startswith(reason))


def test_featurize_counts(featurized):
    """kept = the good records; read = every line; every drop counted by reason."""
    dataset, report = featurized
    # every manifest holds one good record besides its bad one (duplicate_key: its first line is the good one)
    warning_kinds = [k for k in KINDS if k.featurize[0] != "error"]
    assert report.usable == len(dataset) == len(KINDS) + len(warning_kinds)
    assert report.read == 2 * len(KINDS)
    assert report.read - report.usable == sum(report.dropped.values())


def test_featurize_stop_names_every_problem(matrix_dir, bundled_processor, tmp_path):
    config = DataConfig(cache_dir=str(tmp_path))  # on_bad_data stop, the default
    with pytest.raises(DataError, match="bad training data") as err:
        build_dataset([str(matrix_dir / "all.jsonl")], bundled_processor[1], config)
    message = str(err.value)
    for kind in ("malformed_json", "missing_field", "blank_text", "not_utf8", "wav_not_a_string"):
        assert BY_NAME[kind].check[1] in message, kind
    good = matrix_dir / "audio_only.jsonl"
    lines = [_row(k.name, f"{k.name}.wav") for k in KINDS if (matrix_dir / f"{k.name}.wav").is_file()]
    good.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match="unusable audio or transcript") as err:
        build_dataset([str(good)], bundled_processor[1], config)
    for kind in ("corrupt_audio", "zero_length"):  # found in the headers, before any decoding
        assert BY_NAME[kind].check[1] in str(err.value), kind
    headers_ok = [_row(n, f"{n}.wav") for n in ("digital_silence", "nan_samples", "truncated_wav")]
    good.write_bytes(b"\n".join(headers_ok) + b"\n")
    with pytest.raises(DataError, match="unusable audio or transcript") as err:  # found when decoded
        build_dataset([str(good)], bundled_processor[1], config, precompute_features=True)
    for kind in ("digital_silence", "nan_samples", "truncated_wav"):
        assert BY_NAME[kind].check[1] in str(err.value), kind


# -- transcribe ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_transcribe(matrix_dir, kind, bundled_processor, tmp_path, capsys):
    manifest, text = _manifest(matrix_dir, kind)
    if text:  # the CLI finds a Kaldi transcript file by name: <name>.scp -> <name>.txt
        assert Path(text).name == Path(manifest).with_suffix(".txt").name
    out = tmp_path / "out.jsonl"
    argv = ["transcribe", manifest, "--model", str(BUNDLED_MODEL), "--max-new-tokens", "3", "--output", str(out)]
    outcome, reason = kind.transcribe
    status = cli_main(argv)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    stderr = capsys.readouterr().err
    if outcome == "stops":  # the bad file: an error row naming it (and stderr); the good one transcribed; exit 1
        assert status == 1
        (bad,) = [row for row in rows if "error" in row]
        assert reason in bad["error"] and (f"{kind.name}.wav" in bad["error"] or "nowhere.wav" in bad["error"])
        assert reason in stderr
        assert [row for row in rows if "text" in row] and len(rows) == 2
    elif outcome == "reported":  # a manifest problem: named with file:line on stderr, the good line transcribed
        assert status == 1
        assert f"{manifest}:{kind.line}" in stderr and reason in stderr
        assert len(rows) == 1 and "text" in rows[0]
    else:
        assert status == 0
        assert len(rows) == 2


# -- one real fine-tune over every kind -------------------------------------------------------------------------
@pytest.mark.slow
def test_finetune_skips_and_counts_every_kind(matrix_dir, tiny_original_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copy(matrix_dir / "all.jsonl", matrix_dir / "train.jsonl")  # finetune_cmd's name, beside the audio
    cmd = finetune_cmd(
        tiny_original_dir,
        matrix_dir,
        out,
        *"--on_bad_data skip --precompute_features true --max_steps 3 --per_device_train_batch_size 2 --use_cpu"
        " --save_checkpoint_interval 100"
        " --validate_interval 100 --num_workers 0 --disable_tqdm true --lora_r 4".split(),
        valid=False,
    )
    run(cmd, env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    log = (out / "train.log").read_text(encoding="utf-8")
    jsonl_kinds = [k for k in KINDS if not k.name.startswith("kaldi")]
    kept = 7 + sum(k.featurize[0] != "error" for k in jsonl_kinds)  # 6 clips, the first "dup", the warned ones
    assert f"records: {7 + len(jsonl_kinds)}  usable: {kept}" in log, log[-4000:]
    for kind in jsonl_kinds:
        if kind.featurize[0] == "handled":
            continue
        assert kind.check[1] in log or kind.featurize[1] in log, kind.name
    assert (out / "final" / "adapter_model.safetensors").is_file()


# -- property-based fuzzing of the manifest readers ---------------------------------------------------------------
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12), st.lists(st.integers())
)
ROW = st.fixed_dictionaries(
    {}, optional={"key": VALUES, "wav": VALUES, "txt": VALUES, "text": VALUES, "source": VALUES, "target": VALUES}
)


def _blank(raw: bytes) -> bool:
    """A line the readers skip as empty: valid UTF-8 and only whitespace."""
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def _accounted(path: Path) -> None:
    """read_manifest never raises, and every non-empty line is a record or has a problem (or a whole-file
    problem explains them all)."""
    result = read_manifest(path)
    if any(p.source == str(path) for p in result.problems):
        return
    lines = [n for n, raw in enumerate(path.read_bytes().splitlines(), 1) if not _blank(raw)]
    explained = {r.source for r in result.records} | {p.source for p in result.problems}
    for number in lines:
        assert f"{path}:{number}" in explained, (number, path.read_bytes()[:500], result)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=6))
@example(rows=[{"key": "a", "wav": "x\x00y.wav", "txt": "hi"}])  # found by this test: a NUL in a path
def test_fuzz_field_types(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("fuzz") / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    _accounted(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10_000),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "gb18030"]),
)
def test_fuzz_bytes(tmp_path_factory, flips, cut, encoding):
    base = (BUNDLED_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    data = bytearray("\n".join(base).encode(encoding, errors="replace"))
    for position, value in flips:
        data[position % len(data)] = value
    path = tmp_path_factory.mktemp("fuzz") / "m.jsonl"
    path.write_bytes(bytes(data[: max(cut, 1)]))
    _accounted(path)


# -- model-folder and adapter files ---------------------------------------------------------------------------------
@pytest.fixture
def model_copy(tiny_original_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_original_dir, tmp_path / "model", symlinks=True))


def test_misspelt_config_key_is_named_with_the_closest_known_one(model_copy):
    import yaml

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.errors import CheckpointError

    path = model_copy / "config.yaml"
    conf = yaml.safe_load(path.read_text())
    conf["audio_adaptor_conf"]["use_lowframe_rate"] = conf["audio_adaptor_conf"].pop("use_low_frame_rate")
    path.write_text(yaml.safe_dump(conf))
    with pytest.raises(CheckpointError, match=r"unknown key audio_adaptor_conf\.use_lowframe_rate") as err:
        load_pretrained(model_copy)
    assert "did you mean audio_adaptor_conf.use_low_frame_rate?" in str(err.value) and str(path) in str(err.value)


def test_legacy_model_pt_loads_and_hostile_one_is_refused_as_hostile(model_copy, tmp_path):
    import torch

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.conversion.loading import read_model_pt
    from funasr_nano_hf.errors import CheckpointError

    pt = model_copy / "model.pt"
    expected = {k: v.clone() for k, v in read_model_pt(pt).items()}  # not views of the mmapped file
    torch.save(torch.load(pt, weights_only=True), pt, _use_new_zipfile_serialization=False)  # torch < 1.6 format
    legacy = read_model_pt(pt)
    assert legacy.keys() == expected.keys() and all(torch.equal(legacy[k], expected[k]) for k in expected)
    load_pretrained(model_copy)
    marker = tmp_path / "ran"
    for zipped in (True, False):
        torch.save({"state_dict": expected, "x": RunsCode(marker)}, pt, _use_new_zipfile_serialization=zipped)
        with pytest.raises(CheckpointError, match="refused as hostile: it references posix.system") as err:
            load_pretrained(model_copy)
        assert str(pt) in str(err.value) and not marker.exists()


def test_adapters_hostile_or_bin(tmp_path):
    import torch

    from funasr_nano_hf.conversion.loading import check_adapter
    from funasr_nano_hf.errors import CheckpointError

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(CheckpointError, match="adapter_config.json: missing"):
        check_adapter(adapter)
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no adapter weights"):
        check_adapter(adapter)
    weights = {"base_model.model.lora_A.weight": torch.ones(2, 2)}
    torch.save(weights, adapter / "adapter_model.bin")
    check_adapter(adapter)  # plain tensors: accepted (loaded with weights_only)
    marker = tmp_path / "ran"
    for zipped in (True, False):
        torch.save(
            {**weights, "x": RunsCode(marker)}, adapter / "adapter_model.bin", _use_new_zipfile_serialization=zipped
        )
        with pytest.raises(CheckpointError, match="refused as hostile") as err:
            check_adapter(adapter)
        assert str(adapter / "adapter_model.bin") in str(err.value) and not marker.exists()
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10\x00garbage")  # preferred when present
    with pytest.raises(CheckpointError, match="adapter_model.safetensors: truncated or corrupt"):
        check_adapter(adapter)
