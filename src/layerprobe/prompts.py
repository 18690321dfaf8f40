"""Prompt templates for LLaVA: placeholder checks, per-image `{category}` filling, chat wrapping.

A template may only use `{category}`; it is filled per image with the dominant ground-truth
class (largest labelled area, ties to the smaller id). The filled text is then wrapped in the
model's chat format, whose `{prompt}` and `<image>` order decides what image tokens can see.
"""

from __future__ import annotations

import string

import numpy as np

PLACEHOLDERS = {"category"}
IMAGE_FIRST = "USER: <image>\n{prompt} ASSISTANT:"
PROMPT_FIRST = "USER: {prompt}\n<image> ASSISTANT:"
DEFAULT_FORMAT = IMAGE_FIRST
NO_CATEGORY = "object"  # used when an image has no labelled pixel


def placeholders(text: str) -> set[str]:
    """Names of the `{...}` fields in a template (format-spec syntax, `{{` escapes braces)."""
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def validate_prompt(text: str, key: str) -> None:
    """Raise ValueError naming config `key` if `text` uses a placeholder other than {category}."""
    try:
        unknown = placeholders(text) - PLACEHOLDERS
    except ValueError as err:  # unbalanced braces
        raise ValueError(f"config key {key}: malformed template {text!r}: {err}") from None
    if unknown:
        raise ValueError(f"config key {key}: unknown placeholder(s) {sorted(unknown)} in {text!r}; "
                         f"only {{category}} is filled")


def dominant_class(label: np.ndarray, ignore: int = 255) -> int | None:
    """Class id with the largest pixel count, ignoring `ignore`; ties go to the smallest id."""
    counts = np.bincount(np.asarray(label, dtype=np.int64).ravel(), minlength=ignore + 1)
    if ignore < counts.size:
        counts[ignore] = 0
    if not counts.any():
        return None
    return int(np.argmax(counts))  # argmax returns the first (smallest) id among ties


def fill_prompt(text: str, label: np.ndarray, class_names: list[str] | tuple[str, ...]) -> str:
    """Fill `{category}` with the image's dominant class name ("object" if nothing is labelled)."""
    if "category" not in placeholders(text):
        return text.format()  # still unescapes `{{`/`}}`, like the filled case
    cls = dominant_class(label)
    return text.format(category=NO_CATEGORY if cls is None else class_names[cls])


def wrap_prompt(text: str, prompt_format: str = DEFAULT_FORMAT) -> str:
    """Put the (filled) prompt into the chat format; `<image>` stays for the processor to expand."""
    if "{prompt}" not in prompt_format or "<image>" not in prompt_format:
        raise ValueError(f"prompt_format must contain {{prompt}} and <image>: {prompt_format!r}")
    # Plain replace, not str.format: the prompt text may itself contain braces.
    return prompt_format.replace("{prompt}", text)
