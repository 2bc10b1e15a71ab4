"""`funasr-nano-hf` command line: one sub-command per job, each a thin wrapper over the library.

Every sub-command's parser is built here (`build_parser`); global flags (``-v``) apply to all. Model conversion
(`convert-model`, original FunASR folder -> HF folder; `export-funasr`, back) and manifest conversion
(`convert-data`) are different jobs with different names.
"""

from __future__ import annotations

import argparse
import logging
import sys

# `models.configuration_funasr_nano.DTYPES`' keys, spelled out: importing it loads torch, and `--help` must not.
DTYPE_NAMES = ("bf16", "fp16", "fp32")
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def _convert_model(args: argparse.Namespace) -> int:
    from ..conversion import detect_layout, load_pretrained, save_hf_folder
    from ..models.configuration_funasr_nano import DTYPES

    if detect_layout(args.original_dir) != "original":
        raise SystemExit(f"{args.original_dir}: not an original FunASR folder (config.yaml + model.pt)")
    model, processor = load_pretrained(args.original_dir, dtype=DTYPES[args.dtype])
    out = save_hf_folder(model, processor, args.out_dir)
    extra = f", {len(model.funasr_extra_state)} extra tensors kept" if model.funasr_extra_state else ""
    print(f"wrote {out} ({args.dtype} LLM, fp32 audio encoder/adaptor{extra})")
    return 0


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a")


def _transcription_inputs(inputs: list[str]) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """(key, audio path, reference or None) for every audio file, directory (audio files found recursively,
    sorted) and manifest record; and the problems met (printed by the caller)."""
    from pathlib import Path

    items: list[tuple[str, str, str | None]] = []
    problems: list[str] = []
    manifests = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                problems.append(f"{name}: a directory with no audio files ({' '.join(AUDIO_SUFFIXES)}) in it")
            items += [(f.relative_to(path).with_suffix("").as_posix(), str(f), None) for f in found]
        elif name.lower().endswith(AUDIO_SUFFIXES):
            items.append((path.stem, name, None))
        else:
            manifests.append(name)
    if manifests:
        from ..data.readers import read_manifests

        result = read_manifests(manifests)
        problems += [str(problem) for problem in result.problems if problem.severity == "error"]
        for problem in result.problems:
            if problem.severity != "error":
                print(problem, file=sys.stderr)
        items += [(r.key, r.audio, r.text) for r in result.records]
    return items, problems


def _transcribe(args: argparse.Namespace) -> int:
    """Every input that can be transcribed is; each one that cannot gets a JSONL row with ``error`` (and a line
    on stderr); the exit status is 1 when anything failed."""
    import json

    items, problems = _transcription_inputs(args.inputs)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not items:
        raise SystemExit(
            f"transcribe: nothing to transcribe in {' '.join(args.inputs)}: expected audio files "
            f"({' '.join(AUDIO_SUFFIXES)}), directories holding them, or manifests (jsonl / chatml / source-target "
            "/ wav.scp) with at least one record"
        )

    from ..data.audio import load_audio
    from ..inference import SegmentationConfig, load_for_inference, segment_clips, transcribe_detailed

    try:
        segmentation = SegmentationConfig(
            enabled=args.segment, max_segment_s=args.max_segment_s, vad_model=args.vad_model
        )
        if args.vad_model and args.segment:  # a missing funasr fails now, before the model loads
            from ..inference.fsmn_vad import require_funasr

            require_funasr()
    except (ValueError, ImportError) as err:
        raise SystemExit(f"transcribe: --vad-model: {err}") from err
    model, processor = load_for_inference(
        args.model, adapter=args.adapter, device=args.device, dtype=args.dtype, device_map=args.device_map
    )
    rows: list[dict] = [{"key": key} for key, _, _ in items]
    good, waveforms = [], []
    for index, (_, path, _) in enumerate(items):
        try:
            waveform, info = load_audio(path)
            for warning in info.warnings:  # the quality checks' warnings (near-silence, clipping), named
                print(f"warning: {path}: {warning}", file=sys.stderr)
            if not segmentation.enabled:  # refuses over-long clips (segmented ones are cut below the limit)
                segment_clips(processor, model.config, [waveform], segmentation, [path])
        except (ValueError, OSError) as err:  # AudioError is a ValueError; the message names the file
            rows[index].update(audio=path, error=str(err))
            print(f"error: {err}", file=sys.stderr)
            continue
        good.append(index)
        waveforms.append(waveform)
    kwargs = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    results = transcribe_detailed(
        model,
        processor,
        waveforms,
        batch_size=args.batch_size,
        language=args.language,
        hotwords=[w for w in (args.hotwords or "").split(",") if w],
        itn=args.itn,
        progress=True,
        segmentation=segmentation,
        **kwargs,
    )
    for index, result in zip(good, results):
        rows[index].update(result)
        if "warning" in result:
            print(f"warning: {items[index][1]}: {result['warning']}", file=sys.stderr)
    for row, (_, _, reference) in zip(rows, items):
        if reference is not None:
            row["reference"] = reference
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if args.output:
            out.close()
    flagged = sum(r["hit_limit"] or r["repeated"] for r in results)
    if flagged:
        print(f"{flagged} outputs flagged (hit_limit / repeated): check them", file=sys.stderr)
    references = [(row["text"], row["reference"]) for row in rows if "reference" in row and "error" not in row]
    if references:
        from ..evaluation import NORMALIZER_NAME, compute_cer

        scores = compute_cer([p for p, _ in references], [r for _, r in references])
        print(
            f"CER {scores['cer']:.4f} on {len(references)} utterances (normaliser {NORMALIZER_NAME})", file=sys.stderr
        )
    failed = len(items) - len(good) + len(problems)
    if failed:
        print(
            f"transcribe: {failed} problem(s) ({len(items) - len(good)} inputs not transcribed); "
            f"{len(good)} transcribed",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _export_funasr(args: argparse.Namespace) -> int:
    from ..conversion.export import export_funasr

    counts = export_funasr(args.model, args.base, args.output, adapter_dir=args.adapter)
    print(
        f"wrote {args.output} in FunASR's original layout: {counts['changed']} tensors changed, "
        f"{counts['unchanged']} unchanged and {counts['extra']} extra (bit-identical to the base)"
    )
    return 0


def _convert_manifest(args: argparse.Namespace) -> int:
    from ..data.writers import DEFAULT_LENGTHS, convert_manifest

    lengths = args.lengths or DEFAULT_LENGTHS[args.to]
    tokenizer = None
    if not args.calculate_lengths:
        print("lengths not computed: length filtering and batching will compute them from the audio")
    elif lengths == "tokens":
        if not args.tokenizer:
            raise SystemExit(
                "convert-data: --lengths tokens needs --tokenizer DIR (the model's tokenizer, e.g. "
                "Fun-ASR-Nano-2512/Qwen3-0.6B); or pass --lengths chars or --no-calculate-lengths"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    written, problems = convert_manifest(
        args.input,
        args.output,
        to=args.to,
        tokenizer=tokenizer,
        calculate_lengths=args.calculate_lengths,
        lengths=lengths,
        text_path=args.text,
    )
    for problem in problems:
        print(problem, file=sys.stderr)
    units = f", lengths in {lengths}" if args.calculate_lengths else ""
    print(f"wrote {written} records to {args.output} ({args.to}{units}); {len(problems)} problems")
    return 1 if any(p.severity == "error" for p in problems) else 0


def _check_data(args: argparse.Namespace) -> int:
    import json

    from ..data.checks import check_manifests

    texts: list[str | None] = []
    pending = list(args.text or [])
    for manifest in args.manifests:
        texts.append(pending.pop(0) if manifest.endswith(".scp") and pending else None)
    report = check_manifests(
        args.manifests,
        text_paths=texts,
        max_duration_s=args.max_duration,
        min_duration_s=args.min_duration,
        max_text_length=args.max_text_length,
    )
    print(report.format())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report.to_dict(), handle, ensure_ascii=False, indent=2)
    return 1 if report.has_errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="funasr-nano-hf", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert-model", aliases=["convert"], help="model conversion: original FunASR folder -> HF folder"
    )
    convert.add_argument("original_dir")
    convert.add_argument("out_dir")
    convert.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="dtype of the LLM weights")
    convert.set_defaults(func=_convert_model)

    tr = commands.add_parser(
        "transcribe",
        help="audio files, directories or manifests -> JSONL (key, text, duration, flags, segments; error rows)",
    )
    tr.add_argument(
        "inputs", nargs="+", help="audio files, directories (searched recursively) and/or manifests (any format)"
    )
    tr.add_argument("--model", required=True, help="original FunASR folder or HF folder")
    tr.add_argument("--adapter", default=None, help="LoRA adapter folder (merged into the weights for decoding)")
    tr.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps")
    tr.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default=None,
        help="the LLM's dtype (audio encoder/adaptor stay fp32); "
        "default: the folder's (fp32 for an original FunASR folder)",
    )
    tr.add_argument(
        "--device-map", default=None, help="'auto': spread a big model over the GPUs/CPU (replaces --device)"
    )
    tr.add_argument(
        "--max-segment-s",
        type=float,
        default=30.0,
        help="longer recordings are cut at pauses into pieces at most this long (default 30)",
    )
    tr.add_argument(
        "--no-segment",
        dest="segment",
        action="store_false",
        help="decode every file whole (a file over the model's limit is then an error)",
    )
    tr.add_argument(
        "--vad-model",
        default=None,
        metavar="DIR",
        help="FunASR's fsmn-vad model folder: its speech intervals cut long recordings instead of the built-in "
        "energy pauses (needs: pip install funasr-nano-hf[funasr])",
    )
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--language", default=None, help="zh | en | ja | a checkpoint language name")
    tr.add_argument("--hotwords", default=None, help="comma-separated")
    tr.add_argument("--no-itn", dest="itn", action="store_false")
    tr.add_argument("--max-new-tokens", type=int, default=None, help="default: scaled with the duration")
    tr.add_argument("--output", default=None, help="JSONL file (default: stdout)")
    tr.set_defaults(func=_transcribe)

    export = commands.add_parser("export-funasr", help="HF model (+ LoRA adapter) -> FunASR's original layout")
    export.add_argument("--model", required=True, help="HF folder or original folder")
    export.add_argument("--adapter", default=None, help="LoRA adapter folder to merge")
    export.add_argument("--base", required=True, help="the ORIGINAL FunASR folder the model came from")
    export.add_argument("--output", required=True)
    export.set_defaults(func=_export_funasr)

    convert_data = commands.add_parser(
        "convert-data", help="manifest conversion: any manifest -> FunASR ChatML / source-target JSONL"
    )
    convert_data.add_argument("--input", required=True)
    convert_data.add_argument("--output", required=True)
    convert_data.add_argument("--to", choices=["chatml", "source-target"], default="chatml")
    convert_data.add_argument("--text", default=None, help="transcript file when --input is a wav.scp")
    convert_data.add_argument(
        "--lengths",
        choices=["chars", "tokens"],
        default=None,
        help="chars: source_len = duration in 10 ms units, target_len = characters (the guide's converter; default "
        "for source-target); tokens: fbank frames and tokenizer tokens (FunASR's Nano tool; default for chatml)",
    )
    convert_data.add_argument("--tokenizer", default=None, help="folder of the model's tokenizer (--lengths tokens)")
    convert_data.add_argument("--no-calculate-lengths", dest="calculate_lengths", action="store_false")
    convert_data.set_defaults(func=_convert_manifest)

    check = commands.add_parser(
        "check-data", help="validate manifests; report counts, hours, histograms, problems (exit 1 on errors)"
    )
    check.add_argument("manifests", nargs="+", help="jsonl / chatml / source-target / wav.scp manifests")
    check.add_argument(
        "--text", action="append", default=None, help="transcript file of a wav.scp (once per .scp, in order)"
    )
    check.add_argument("--max-duration", type=float, default=20.0, help="seconds (FunASR: 2000 fbank frames)")
    check.add_argument("--min-duration", type=float, default=0.1)
    check.add_argument("--max-text-length", type=int, default=200)
    check.add_argument("--json", help="also write the report as JSON here")
    check.set_defaults(func=_check_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
