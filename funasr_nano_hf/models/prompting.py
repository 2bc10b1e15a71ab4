"""FunASR's prompt text, verbatim.

`FunASRNano.get_prompt` (inference) and the ChatML source string of `data_load_speech` (training and
inference) are reproduced here once, so the processor, the data pipeline and the tests share them.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
HOTWORD_HEADER = "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n**上下文信息：**\n\n\n"
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


def chatml_prompt(user_prefix: str, audio_text: str, system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The first-turn ChatML source, up to and including the assistant header (no `<think>` block)."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    return f"{head}<|im_start|>user\n{user_prefix}{audio_text}<|im_end|>\n<|im_start|>assistant\n"


def target_text(transcript: str) -> str:
    """What the assistant turn is trained to produce (FunASR appends `<|im_end|>`)."""
    return f"{transcript}<|im_end|>"
