#!/usr/bin/env python
"""Measure, side by side in one run, how far each known difference of transformers' `fun_asr_nano` port
moves the outputs away from FunASR's own implementation (same random weights, eval, dither 0, fp32).

For each fix we turn exactly that one back to the stock behaviour and report the max |Δ| of features,
adaptor output and teacher-forced logits against FunASR, the audio token count, and the greedy-token
agreement. `--size real` uses the Fun-ASR-Nano-2512 architecture (slow: ~2 GB checkpoint).

    python benchmarks/parity_report.py --size tiny
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import soundfile as sf
import torch

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.inference import generate_ids
from funasr_nano_hf.models import FunAsrNanoHfForConditionalGeneration, prompting
from funasr_nano_hf.testing.funasr_checkpoint import write_original_checkpoint
from funasr_nano_hf.testing.funasr_reference import FunASRReference

TRANSCRIPT = "我想问我在滨海新区有房"


def variant(model, processor, name):
    """A copy of (model, processor) with one fix reverted to the stock transformers behaviour."""
    if name == "ours":
        return model, processor
    config = copy.deepcopy(model.config)
    processor = copy.deepcopy(processor)
    if name == "no x32768 scaling":
        processor.feature_extractor.upscale_samples = False
    elif name == "all frames as audio tokens":
        config.audio_token_rule = "all_frames"
        processor.audio_token_rule = "all_frames"
    elif name == "adaptor LayerNorm eps 1e-5":
        config.adaptor_config.layer_norm_eps = 1e-5
    elif name == "fp32 RoPE inv_freq":
        config.rope_inv_freq_dtype = None
    elif name == "adaptor padding unmasked":
        pass
    twin = FunAsrNanoHfForConditionalGeneration(config)
    twin.load_state_dict(model.state_dict())
    if name == "adaptor padding unmasked":
        config.adaptor_config._attn_implementation = None
    return twin.eval(), processor


def measure(model, processor, reference, wav_path, waveform):
    instruction = prompting.instruction()
    feats = processor.feature_extractor([waveform], return_tensors="pt")
    ref_feats, ref_lens = reference.features(torch.from_numpy(waveform))
    _, ref_adaptor = reference.encode(ref_feats, ref_lens)
    ref_logits, _, _ = reference.teacher_forced(wav_path, instruction, TRANSCRIPT)
    example = processor.build_training_example(waveform, TRANSCRIPT, instruction)
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        audio = model.model.get_audio_features(feats["input_features"], feats["input_features_mask"])
        logits = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            input_features=feats["input_features"],
            input_features_mask=feats["input_features_mask"],
        ).logits
    row = {
        "features": (feats["input_features"] - ref_feats).abs().max().item(),
        "adaptor": (audio.adaptor_hidden_states - ref_adaptor).abs().max().item(),
        "audio tokens": int(audio.audio_token_lengths[0]),
    }
    if logits.shape == ref_logits.shape:
        row["logits"] = (logits - ref_logits).abs().max().item()
        row["argmax agree"] = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    else:
        row["logits"] = float("nan")
        row["argmax agree"] = float("nan")
    ref_ids = reference.greedy(wav_path, instruction, max_new_tokens=20)
    ours = generate_ids(model, processor, [waveform], max_new_tokens=20)[0].tolist()
    row["greedy equal"] = ours == ref_ids
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--wav", default="../shared/data/real/sample.wav")
    args = parser.parse_args()
    waveform, _ = sf.read(args.wav, dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_original_checkpoint(tmp, size=args.size, seed=0)
        reference = FunASRReference(folder)
        model, processor = load_pretrained(folder)
        names = [
            "ours",
            "no x32768 scaling",
            "all frames as audio tokens",
            "adaptor LayerNorm eps 1e-5",
            "fp32 RoPE inv_freq",
        ]
        print(
            f"{'variant':32s} {'features':>10s} {'adaptor':>10s} {'tokens':>6s} {'logits':>10s} {'argmax':>7s} greedy"
        )
        for name in names:
            m, p = variant(model, processor, name)
            r = measure(m, p, reference, args.wav, waveform)
            print(
                f"{name:32s} {r['features']:10.3g} {r['adaptor']:10.3g} {r['audio tokens']:6d} {r['logits']:10.3g} "
                f"{r['argmax agree']:7.2%} {r['greedy equal']}"
            )


if __name__ == "__main__":
    main()
