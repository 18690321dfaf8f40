"""Prompt templates: placeholder validation, dominant-class filling, chat wrapping."""

from __future__ import annotations

import numpy as np
import pytest

from layerprobe.prompts import (IMAGE_FIRST, PROMPT_FIRST, dominant_class, fill_prompt, placeholders,
                                validate_prompt, wrap_prompt)

NAMES = ["wall", "building", "sky", "chest of drawers"]


def test_placeholders() -> None:
    assert placeholders("Describe the {category} in the image") == {"category"}
    assert placeholders("Describe the image in detail") == set()
    assert placeholders("{{literal}} braces") == set()


def test_validate_prompt_rejects_unknown_placeholder_naming_key() -> None:
    validate_prompt("Imagine what it would look like to see a {category}", "models.llava.prompts[0].text")
    with pytest.raises(ValueError, match=r"models\.llava\.prompts\[1\]\.text.*object"):
        validate_prompt("Describe the {object}", "models.llava.prompts[1].text")
    with pytest.raises(ValueError, match="models.x.text"):
        validate_prompt("Describe the {}", "models.x.text")
    with pytest.raises(ValueError, match="models.x.text"):
        validate_prompt("unbalanced {category", "models.x.text")


def test_dominant_class_ignores_255_and_breaks_ties_to_smallest_id() -> None:
    label = np.full((4, 4), 255, np.uint8)
    assert dominant_class(label) is None
    label[0, :3] = 2  # 3 pixels of class 2, the other 13 ignored
    assert dominant_class(label) == 2
    label[1, :3] = 1  # tie 3 vs 3 -> smaller id
    assert dominant_class(label) == 1
    label[2, :4] = 3
    assert dominant_class(label) == 3
    assert dominant_class(np.zeros((2, 2), np.uint8)) == 0


def test_fill_prompt() -> None:
    label = np.full((3, 3), 255, np.uint8)
    label[0] = 3
    assert fill_prompt("Describe the {category} in the image", label, NAMES) == \
        "Describe the chest of drawers in the image"
    assert fill_prompt("See a {category}", np.full((3, 3), 255, np.uint8), NAMES) == "See a object"
    assert fill_prompt("Describe the image in detail", label, NAMES) == "Describe the image in detail"


def test_wrap_prompt_formats() -> None:
    assert wrap_prompt("Describe it") == "USER: <image>\nDescribe it ASSISTANT:"
    assert wrap_prompt("Describe it", IMAGE_FIRST) == "USER: <image>\nDescribe it ASSISTANT:"
    assert wrap_prompt("Describe it", PROMPT_FIRST) == "USER: Describe it\n<image> ASSISTANT:"
    assert wrap_prompt("odd {braces}", PROMPT_FIRST) == "USER: odd {braces}\n<image> ASSISTANT:"
    with pytest.raises(ValueError, match="prompt_format"):
        wrap_prompt("x", "USER: {prompt} ASSISTANT:")
