"""FunASR's prompt text, verbatim, in one place.

Vocabulary: the *instruction* is the user-turn text before the audio (``语音转写：``, with language, hotword
header and ``，不进行文本规整`` variants); the *ChatML prompt* is the whole first-turn source (system turn, user
turn = instruction + audio span, assistant header). `FunASRNano.get_prompt` (inference) and the ChatML source
string of `data_load_speech` (training and inference) are reproduced here once, so the processor, the manifest
readers/writers and the tests share them; `parse_instruction` reads an instruction back (ChatML manifests).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
HOTWORD_HEADER = (
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n**上下文信息：**\n\n\n"
)
NO_ITN_SUFFIX = "，不进行文本规整"

# Nano was trained with Chinese language names in "语音转写成<NAME>：".
LANGUAGE_NAMES = {
    "zh": "中文",
    "chinese": "中文",
    "en": "英文",
    "english": "英文",
    "ja": "日文",
    "japanese": "日文",
}


SPEECH_START, SPEECH_END = "<|startofspeech|>", "<|endofspeech|>"
# The audio span of a ChatML user turn: `<|startofspeech|>!PATH<|endofspeech|>` (FunASR's manifest form).
SPEECH_SPAN_RE = re.compile(re.escape(SPEECH_START) + r"!(.*?)" + re.escape(SPEECH_END), re.S)


def language_name(language: str | None) -> str | None:
    """Map `zh`/`en`/`ja` (or English names) to the checkpoint's names; other strings pass through."""
    if language is None:
        return None
    return LANGUAGE_NAMES.get(language.strip().lower(), language.strip())


def instruction(language: str | None = None, hotwords: Sequence[str] | None = None, itn: bool = True) -> str:
    """The user-turn text before the audio, exactly as `FunASRNano.get_prompt` builds it."""
    prompt = f"{HOTWORD_HEADER}热词列表：[{', '.join(hotwords)}]\n" if hotwords else ""
    name = language_name(language)
    prompt += "语音转写" if name is None else f"语音转写成{name}"
    if not itn:
        prompt += NO_ITN_SUFFIX
    return prompt + "："


def language_code(name: str) -> str:
    """Inverse of `language_name`: `中文`/`Chinese` -> `zh`, ...; names without a code pass through."""
    canonical = LANGUAGE_NAMES.get(name.strip().lower(), name.strip())
    return next((code for code, value in LANGUAGE_NAMES.items() if value == canonical and len(code) == 2), name)


def parse_instruction(text: str | None) -> tuple[str | None, bool, list[str] | None]:
    """(language, itn, hotwords) that an instruction expresses (Chinese or English FunASR prompts)."""
    if not text:
        return None, True, None
    language = None
    if match := re.search(r"语音转写成([^，：:]+)", text):
        language = language_code(match.group(1))
    elif match := re.search(r"[Tt]ranscribe speech into (\w+)", text):
        language = language_code(match.group(1))
    itn = not (NO_ITN_SUFFIX[1:] in text or "without text normalization" in text.lower())
    hotwords = None
    if match := re.search(r"热词列表：\[(.*?)\]", text):
        hotwords = [w.strip() for w in match.group(1).split(",") if w.strip()] or None
    return language, itn, hotwords


def speech_span(audio: str) -> str:
    """The audio as FunASR's ChatML manifests write it in the user turn."""
    return f"{SPEECH_START}!{audio}{SPEECH_END}"


def chatml_prompt(instruction: str, audio_text: str, system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The first-turn ChatML source, up to and including the assistant header (no `<think>` block)."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    return f"{head}<|im_start|>user\n{instruction}{audio_text}<|im_end|>\n<|im_start|>assistant\n"


def target_text(transcript: str) -> str:
    """What the assistant turn is trained to produce (FunASR appends `<|im_end|>`)."""
    return f"{transcript}<|im_end|>"
