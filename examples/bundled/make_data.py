#!/usr/bin/env python
"""Synthetic Mandarin + English speech for the bundled model: espeak-ng (Debian package `espeak-ng`).

    python examples/bundled/make_data.py --out outputs/bundled_data [--pretrain 6000]

Two worlds that share one vocabulary:
  pretrain/     domain A ("assistant": times, dates, weather, numbers, commands), voices A
  finetune/     domain B ("travel desk": tickets, trains, hotels, rooms), voices B: other espeak
                variants, slower and higher/lower pitched, train + held-out splits
Every character/word of domain B also occurs in domain A, so a fine-tune adapts the model to new
sentence patterns and new voices, not to unseen tokens. Manifests are plain {"key","wav","txt"} lines with
wav paths relative to the manifest; audio is 16 kHz mono 16-bit, silence-trimmed, 0.1 s padding.
Deterministic for one espeak-ng build (seeded `random.Random`).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

TARGET_SR = 16000

ZH_DIGITS = "零一二三四五六七八九"
EN_DIGITS = "zero one two three four five six seven eight nine".split()
EN_TENS = "twenty thirty forty fifty".split()
EN_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()


def zh_number(n: int) -> str:
    """1..99 in characters."""
    tens, ones = divmod(n, 10)
    if tens == 0:
        return ZH_DIGITS[ones]
    head = "十" if tens == 1 else ZH_DIGITS[tens] + "十"
    return head + (ZH_DIGITS[ones] if ones else "")


def en_number(n: int) -> str:
    """1..59 in words."""
    if n < 10:
        return EN_DIGITS[n]
    if n < 20:
        return EN_TEENS[n - 10]
    tens, ones = divmod(n, 10)
    return EN_TENS[tens - 2] + (f" {EN_DIGITS[ones]}" if ones else "")


# -- shared lexicon ---------------------------------------------------------------------------------------
ZH_PLACES = [
    "北京",
    "上海",
    "南京",
    "天津",
    "西安",
    "广州",
    "杭州",
    "学校",
    "公司",
    "医院",
    "车站",
    "机场",
    "酒店",
    "商店",
]
ZH_PEOPLE = ["我", "你", "他", "她", "我们", "他们", "老师", "妈妈", "朋友"]
ZH_DAYS = ["今天", "明天", "后天", "昨天"]
ZH_PARTS = ["上午", "下午", "晚上", "早上"]
ZH_THINGS = ["票", "房间", "火车", "飞机", "电话", "水", "茶", "饭", "灯", "门"]
EN_PLACES = ["london", "paris", "boston", "the station", "the airport", "the hotel", "the office", "the school"]
EN_PEOPLE = ["i", "you", "we", "they", "my friend", "the teacher"]
EN_DAYS = ["today", "tomorrow", "monday", "friday", "sunday"]
EN_THINGS = ["ticket", "room", "train", "flight", "table", "taxi", "light", "door"]


def zh_time(rng: random.Random) -> str:
    return rng.choice(ZH_PARTS) + zh_number(rng.randint(1, 12)) + "点" + rng.choice(["", "半", "十分", "二十分"])


def en_time(rng: random.Random) -> str:
    return f"{en_number(rng.randint(1, 12))} {rng.choice(['o clock', 'thirty', 'fifteen', 'forty five'])}"


def zh_digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ZH_DIGITS) for _ in range(n))


def en_digits(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(EN_DIGITS) for _ in range(n))


# domain A: a home assistant
def assistant_zh(rng: random.Random) -> str:
    return rng.choice(
        [
            lambda: f"{rng.choice(ZH_DAYS)}{zh_number(rng.randint(1, 39))}度",
            lambda: f"{rng.choice(ZH_DAYS)}是星期{rng.choice('一二三四五六天')}",
            lambda: f"现在是{zh_time(rng)}",
            lambda: f"号码是{zh_digits(rng, rng.randint(3, 6))}",
            lambda: f"{zh_number(rng.randint(1, 99))}块钱",
            lambda: f"{rng.choice(ZH_PEOPLE)}{rng.choice(ZH_DAYS)}去{rng.choice(ZH_PLACES)}",
            lambda: f"请{rng.choice(['打开', '关上'])}{rng.choice(['灯', '门', '电视', '空调'])}",
            lambda: f"{rng.choice(ZH_PEOPLE)}想喝{rng.choice(['水', '茶', '咖啡'])}",
            lambda: f"{rng.choice(ZH_PEOPLE)}在{rng.choice(ZH_PLACES)}吃饭",
            lambda: f"{rng.choice(ZH_PEOPLE)}坐{rng.choice(['火车', '飞机'])}去{rng.choice(ZH_PLACES)}",
            lambda: f"给{rng.choice(ZH_PEOPLE)}打电话",
            lambda: f"{rng.choice(ZH_PLACES)}有{zh_number(rng.randint(2, 99))}个{rng.choice(['房间', '人', '门'])}",
            lambda: (
                f"{rng.choice(['你好', '谢谢', '再见', '早上好', '晚上好'])}{rng.choice(['', '老师', '朋友', '妈妈'])}"
            ),
            lambda: f"{rng.choice(ZH_PEOPLE)}要一张{rng.choice(['票', '桌子', '电话卡'])}",
            lambda: f"{rng.choice(ZH_PEOPLE)}的{rng.choice(ZH_THINGS)}在{rng.choice(ZH_PLACES)}",
            lambda: f"{rng.choice(ZH_PEOPLE)}{rng.choice(ZH_DAYS)}到{rng.choice(ZH_PLACES)}",
        ]
    )()


def assistant_en(rng: random.Random) -> str:
    return rng.choice(
        [
            lambda: f"set a timer for {en_number(rng.randint(2, 59))} minutes",
            lambda: f"turn {rng.choice(['on', 'off'])} the {rng.choice(['kitchen', 'bedroom', 'office'])} light",
            lambda: f"it is {en_number(rng.randint(1, 39))} degrees {rng.choice(EN_DAYS)}",
            lambda: f"the number is {en_digits(rng, rng.randint(3, 5))}",
            lambda: f"wake me up at {en_time(rng)}",
            lambda: f"{rng.choice(EN_PEOPLE)} will go to {rng.choice(EN_PLACES)} {rng.choice(EN_DAYS)}",
            lambda: f"call {rng.choice(['my friend', 'the teacher', 'the hotel', 'the office'])}",
            lambda: f"open the {rng.choice(['door', 'window', 'room'])}",
            lambda: (
                f"{rng.choice(['hello', 'thank you', 'good morning', 'good night'])} "
                f"{rng.choice(['', 'my friend', 'teacher'])}"
            ).strip(),
            lambda: f"play some {rng.choice(['music', 'jazz', 'news'])}",
            lambda: f"a {rng.choice(EN_THINGS)} for {en_number(rng.randint(2, 9))} people",
            lambda: f"is there a {rng.choice(EN_THINGS)} {rng.choice(EN_DAYS)}",
            lambda: f"{rng.choice(EN_PEOPLE)} {rng.choice(['are late', 'are on time', 'need tickets', 'book it'])}",
        ]
    )()


# domain B: a travel desk (same words, new patterns)
def travel_zh(rng: random.Random) -> str:
    return rng.choice(
        [
            lambda: f"{rng.choice(ZH_DAYS)}{zh_time(rng)}去{rng.choice(ZH_PLACES)}的票",
            lambda: f"要{zh_number(rng.randint(1, 9))}张去{rng.choice(ZH_PLACES)}的票",
            lambda: f"{rng.choice(ZH_PLACES)}到{rng.choice(ZH_PLACES)}的火车",
            lambda: f"房间号码是{zh_digits(rng, 3)}",
            lambda: f"{rng.choice(['火车', '飞机'])}{zh_time(rng)}到",
            lambda: f"酒店有{zh_number(rng.randint(2, 9))}个房间",
            lambda: f"{rng.choice(ZH_PEOPLE)}要去{rng.choice(ZH_PLACES)}的{rng.choice(['火车', '飞机'])}",
        ]
    )()


def travel_en(rng: random.Random) -> str:
    return rng.choice(
        [
            lambda: f"a {rng.choice(['train', 'flight'])} to {rng.choice(EN_PLACES)} at {en_time(rng)}",
            lambda: f"{en_number(rng.randint(1, 9))} tickets to {rng.choice(EN_PLACES)} {rng.choice(EN_DAYS)}",
            lambda: f"room number {en_digits(rng, 3)}",
            lambda: (
                f"the {rng.choice(['train', 'flight'])} to {rng.choice(EN_PLACES)} is {rng.choice(['late', 'on time'])}"
            ),
            lambda: f"book a {rng.choice(['room', 'table', 'taxi'])} for {rng.choice(EN_DAYS)}",
        ]
    )()


# -- voices -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VoiceSet:
    zh: tuple[str, ...]
    en: tuple[str, ...]
    variants: tuple[str, ...]
    speed: tuple[int, int]
    pitch: tuple[int, int]


VOICES_A = VoiceSet(
    ("cmn-latn-pinyin",), ("en-us", "en-gb"), ("", "m1", "m2", "m3", "f1", "f2", "f3"), (150, 190), (35, 65)
)
VOICES_B = VoiceSet(
    ("cmn-latn-pinyin",), ("en-029", "en-gb-scotland"), ("Andy", "Annie", "belinda", "ed"), (115, 140), (20, 85)
)


def synthesize(job: tuple[str, str, str, int, int, str]) -> float:
    """espeak-ng -> trim silence -> 16 kHz int16 wav; returns the duration in seconds."""
    text, lang, voice, speed, pitch, out = job
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", tmp.name, text],
            check=True,
            capture_output=True,
        )
        audio, sr = sf.read(tmp.name, dtype="float32")
    loud = np.flatnonzero(np.abs(audio) > 10 ** (-70 / 20))
    if len(loud):
        audio = audio[max(loud[0] - sr // 100, 0) : loud[-1] + sr // 100]
    audio = torchaudio.functional.resample(torch.from_numpy(audio), sr, TARGET_SR).numpy()
    pad = np.zeros(TARGET_SR // 10, dtype=np.float32)
    audio = np.concatenate([pad, audio, pad])
    sf.write(out, np.clip(audio, -1, 1), TARGET_SR, subtype="PCM_16", format="WAV")
    return len(audio) / TARGET_SR


def make_split(
    out_dir: Path,
    name: str,
    count: int,
    domain: str,
    voices: VoiceSet,
    rng: random.Random,
    exclude: set[str],
    workers: int,
    unique: bool = True,
    write: bool = True,
) -> set[str]:
    """`count` clips; with `unique`, no sentence repeats or occurs in `exclude` (the earlier splits).
    `write=False` only draws the sentences (to reproduce a later split without re-synthesising this one)."""
    make_zh, make_en = (assistant_zh, assistant_en) if domain == "A" else (travel_zh, travel_en)
    wav_dir = out_dir / "wav" / name
    wav_dir.mkdir(parents=True, exist_ok=True)
    rows, jobs, seen = [], [], set(exclude)
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > count * 50:
            raise RuntimeError(f"{name}: the grammar ran out of distinct sentences at {len(rows)}")
        lang = "zh" if len(rows) % 2 == 0 else "en"
        text = make_zh(rng) if lang == "zh" else make_en(rng)
        if text in exclude or (unique and text in seen):
            continue
        seen.add(text)
        variant = rng.choice(voices.variants)
        base = rng.choice(voices.zh if lang == "zh" else voices.en)
        voice = f"{base}+{variant}" if variant else base
        key = f"{name}_{len(rows):05d}_{lang}"
        wav = wav_dir / f"{key}.wav"
        jobs.append((text, lang, voice, rng.randint(*voices.speed), rng.randint(*voices.pitch), str(wav)))
        rows.append({"key": key, "wav": f"wav/{name}/{key}.wav", "txt": text})
    if not write:
        return seen
    with ProcessPoolExecutor(workers) as pool:
        durations = list(pool.map(synthesize, jobs, chunksize=32))
    with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(
        f"[make_data] {out_dir / name}.jsonl: {len(rows)} clips, {sum(durations) / 60:.1f} min, "
        f"{min(durations):.2f}-{max(durations):.2f} s"
    )
    return seen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bundled_data")
    parser.add_argument("--pretrain", type=int, default=6000)
    parser.add_argument("--pretrain_valid", type=int, default=200)
    parser.add_argument("--finetune", type=int, default=480)
    parser.add_argument("--heldout", type=int, default=60)
    parser.add_argument("--splits", default="pretrain,finetune", help="which of pretrain,finetune to synthesise")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    out = Path(args.out)
    # Pretraining repeats sentences (in other voices); the held-out splits never share one with any other split.
    pretrain, finetune = (part in args.splits.split(",") for part in ("pretrain", "finetune"))
    seen = make_split(
        out / "pretrain", "train", args.pretrain, "A", VOICES_A, rng, set(), args.workers, unique=False, write=pretrain
    )
    seen = make_split(
        out / "pretrain", "valid", args.pretrain_valid, "A", VOICES_A, rng, seen, args.workers, write=pretrain
    )
    seen = make_split(out / "finetune", "train", args.finetune, "B", VOICES_B, rng, seen, args.workers, write=finetune)
    make_split(out / "finetune", "heldout", args.heldout, "B", VOICES_B, rng, seen, args.workers, write=finetune)


if __name__ == "__main__":
    main()
