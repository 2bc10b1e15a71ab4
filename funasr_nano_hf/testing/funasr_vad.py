"""Write an ``fsmn-vad`` model folder in FunASR's release layout with FunASR's own classes.

The released VAD (``iic/speech_fsmn_vad_zh-cn-16k-common-pytorch``, FunASR's ``fsmn-vad``) cannot be
downloaded here, so the VAD path is proven on a folder built like it: ``config.yaml`` (the released keys),
``configuration.json``, ``model.pt`` (the `FsmnVADStreaming` state dict) and ``am.mvn`` (Kaldi-nnet CMVN).
The weights are seeded random, except that the output layer's bias makes the silence pdf improbable: every
frame is then "speech" to the network and FunASR's own decibel gate (``decibel_thres``) and state machine
(pauses of ``max_end_silence_time``, ``max_single_segment_time``) decide the segments - deterministic and
audible-vs-silent, like a trained VAD on clean audio.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import yaml

# config.yaml of FunASR's released fsmn-vad (the keys FsmnVADStreaming / FSMN / WavFrontendOnline read).
FSMN_VAD_YAML: dict[str, Any] = {
    "frontend": "WavFrontendOnline",
    "frontend_conf": {
        "fs": 16000,
        "window": "hamming",
        "n_mels": 80,
        "frame_length": 25,
        "frame_shift": 10,
        "dither": 0.0,
        "lfr_m": 5,
        "lfr_n": 1,
    },
    "model": "FsmnVADStreaming",
    "model_conf": {
        "sample_rate": 16000,
        "detect_mode": 1,
        "snr_mode": 0,
        "max_end_silence_time": 800,
        "max_start_silence_time": 3000,
        "do_start_point_detection": True,
        "do_end_point_detection": True,
        "window_size_ms": 200,
        "sil_to_speech_time_thres": 150,
        "speech_to_sil_time_thres": 150,
        "speech_2_noise_ratio": 1.0,
        "do_extend": 1,
        "lookback_time_start_point": 200,
        "lookahead_time_end_point": 100,
        "max_single_segment_time": 60000,
        "snr_thres": -100.0,
        "noise_frame_num_used_for_snr": 100,
        "decibel_thres": -100.0,
        "speech_noise_thres": 0.6,
        "fe_prior_thres": 0.0001,
        "silence_pdf_num": 1,
        "sil_pdf_ids": [0],
        "speech_noise_thresh_low": -0.1,
        "speech_noise_thresh_high": 0.3,
        "output_frame_probs": False,
        "frame_in_ms": 10,
        "frame_length_ms": 25,
    },
    "encoder": "FSMN",
    "encoder_conf": {
        "input_dim": 400,
        "input_affine_dim": 140,
        "fsmn_layers": 4,
        "linear_dim": 250,
        "proj_dim": 128,
        "lorder": 20,
        "rorder": 0,
        "lstride": 1,
        "rstride": 0,
        "output_affine_dim": 140,
        "output_dim": 248,
    },
}

CONFIGURATION_JSON = {
    "framework": "pytorch",
    "task": "voice-activity-detection",
    "model": {"type": "funasr"},
    "file_path_metas": {"init_param": "model.pt", "config": "config.yaml", "frontend_conf": {"cmvn_file": "am.mvn"}},
}


def _write_cmvn(path: Path, dim: int) -> None:
    """An identity CMVN (shift 0, scale 1) in the Kaldi-nnet text format FunASR's `load_cmvn` reads."""
    zeros, ones = " ".join(["0"] * dim), " ".join(["1"] * dim)
    path.write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {zeros} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {ones} ]\n</Nnet>\n",
        encoding="utf-8",
    )


def write_fsmn_vad_folder(folder: str | Path, *, speech_db: float = -20.0, seed: int = 0, **model_conf: Any) -> Path:
    """Build `FsmnVADStreaming` with FunASR's classes and save it as the released folder is laid out.

    speech_db: FunASR's ``decibel_thres``: frames quieter than this (10*log10 of the sum of squares of a 25 ms
    frame of the float waveform) are silence, louder ones speech. `model_conf` overrides other released keys
    (e.g. ``max_end_silence_time``)."""
    from funasr.models.fsmn_vad_streaming.model import FsmnVADStreaming

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    conf = copy.deepcopy(FSMN_VAD_YAML)
    conf["model_conf"].update(decibel_thres=float(speech_db), **model_conf)
    torch.manual_seed(seed)
    model = FsmnVADStreaming(encoder=conf["encoder"], encoder_conf=conf["encoder_conf"], **conf["model_conf"])
    with torch.no_grad():
        model.encoder.out_linear2.linear.bias[0] = -30.0  # the silence pdf (sil_pdf_ids: [0]) never wins
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False), encoding="utf-8")
    (folder / "configuration.json").write_text(json.dumps(CONFIGURATION_JSON, indent=2), encoding="utf-8")
    _write_cmvn(folder / "am.mvn", conf["encoder_conf"]["input_dim"])
    return folder
