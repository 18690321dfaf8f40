"""Prompt templates: placeholder validation, the category fills (the dominant-class oracle and its
shuffled / random / none controls), chat wrapping."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr

from layerprobe.models.prompts import (
    IMAGE_FIRST,
    NO_CATEGORY,
    PROMPT_FIRST,
    category_classes,
    dominant_class,
    dominant_classes,
    donor_rows,
    fill_prompt,
    fill_template,
    placeholders,
    prompt_filler,
    split_dominant_classes,
    validate_prompt,
    wrap_prompt,
)

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


# --------------------------------------------------------------------------------------------
# Category fills
# --------------------------------------------------------------------------------------------

TEMPLATE = "Describe the {category} in the image"


def _labels(n: int, seed: int = 0, side: int = 8) -> np.ndarray:
    """Labels whose dominant class is known: image i mostly class i % 5 (some 255), image 3 all 255."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, size=(n, side, side)).astype(np.uint8)
    for i in range(n):
        labels[i, : side // 2 + 1] = i % 5
    labels[:, 0, :2] = 255
    labels[3] = 255
    return labels


def _data_store(path: Path, counts: dict[str, int]) -> zarr.Group:
    group = zarr.open_group(path, mode="w")
    for split, n in counts.items():
        group.create_array(f"{split}/labels", data=_labels(n, seed=len(split)), chunks=(4, 8, 8))
    return group


def test_dominant_classes_match_dominant_class_per_image() -> None:
    labels = np.random.default_rng(1).integers(0, 4, size=(40, 5, 5)).astype(np.uint8)  # many ties
    labels[::3, :2] = 255
    labels[7] = 255
    expected = [dominant_class(label) for label in labels]
    assert dominant_classes(labels).tolist() == [-1 if c is None else c for c in expected]
    assert dominant_classes(labels).tolist().count(-1) == 1


def test_shuffled_gives_every_image_another_images_class_with_the_same_marginal(tmp_path: Path) -> None:
    data = _data_store(tmp_path / "data.zarr", {"training": 23, "validation": 9})
    own = split_dominant_classes(data, "training")
    assert own.tolist() == [-1 if i == 3 else i % 5 for i in range(23)]
    donors = donor_rows(23, 0, "training")
    assert (donors != np.arange(23)).all()  # a derangement: nobody keeps its own
    assert sorted(donors.tolist()) == list(range(23))  # every image donates exactly once
    rows = np.arange(23)
    shuffled = category_classes("shuffled", "training", data["training/labels"][:], rows, 150, 0, data)
    assert Counter(shuffled.tolist()) == Counter(own.tolist())  # same classes, same counts
    assert (shuffled != own).any()
    assert shuffled.tolist() == own[donors].tolist()
    # Another seed, another split: another permutation.
    assert not np.array_equal(donor_rows(23, 1, "training"), donors)
    assert not np.array_equal(donor_rows(23, 0, "validation"), donors)
    with pytest.raises(ValueError, match="at least 2 images"):
        donor_rows(1, 0, "training")


@pytest.mark.parametrize("fill", ["dominant", "shuffled", "random", "none"])
def test_fills_depend_on_the_row_only_not_on_batching(tmp_path: Path, fill: str) -> None:
    data = _data_store(tmp_path / "data.zarr", {"training": 23})
    labels = data["training/labels"][:]
    fill_batch = prompt_filler(TEMPLATE, fill, [f"class{i}" for i in range(150)], seed=4, data=data)
    whole = fill_batch("training", labels, np.arange(23))
    assert len(whole) == 23 and fill_batch("training", labels, np.arange(23)) == whole
    batched = [p for b in range(0, 23, 5)
               for p in fill_batch("training", labels[b:b + 5], np.arange(b, min(b + 5, 23)))]
    assert batched == whole
    rows = np.array([17, 2, 9, 3])  # a subset in another order (a store's shuffled chunk, a scan's rows)
    assert fill_batch("training", labels[rows], rows) == [whole[r] for r in rows]


def test_random_covers_the_names_uniformly_and_is_seeded() -> None:
    rows = np.arange(6000)
    blank = np.zeros((6000, 1, 1), np.uint8)  # random ignores the labels
    first = category_classes("random", "training", blank, rows, 150, 0)
    assert np.array_equal(first, category_classes("random", "training", blank, rows, 150, 0))
    counts = np.bincount(first, minlength=150)
    assert len(counts) == 150 and counts.min() > 0
    chi2 = float(((counts - 40) ** 2 / 40).sum())  # 149 degrees of freedom: mean 149, sd ~17
    assert chi2 < 230, chi2
    other = category_classes("random", "training", blank, rows, 150, 1)
    assert (other != first).mean() > 0.9  # another seed: new draws (1/150 agree by chance)


def test_none_drops_the_placeholder_and_its_spaces() -> None:
    assert fill_template(TEMPLATE, None) == "Describe the in the image"
    assert fill_template("{category} in the image", None) == "in the image"
    assert fill_template("Imagine a {category}.", None) == "Imagine a."
    assert fill_template("Describe the image {{as is}}", None) == "Describe the image {as is}"
    labels = _labels(4)
    assert prompt_filler(TEMPLATE, "none", ["a"] * 150)("training", labels, np.arange(4)) == \
        ["Describe the in the image"] * 4


def test_dominant_fill_is_the_oracle_and_a_template_without_category_is_kept() -> None:
    labels, names = _labels(5), [f"class{i}" for i in range(150)]
    filled = prompt_filler(TEMPLATE, "dominant", names)("validation", labels, np.arange(5))
    assert filled == [fill_prompt(TEMPLATE, label, names) for label in labels]
    assert filled[1] == "Describe the class1 in the image" and filled[3] == f"Describe the {NO_CATEGORY} in the image"
    plain = prompt_filler("Describe the image in detail", None, names)("training", labels, np.arange(5))
    assert plain == ["Describe the image in detail"] * 5


def test_split_classes_are_read_once_per_data_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import layerprobe.models.prompts as prompts

    data = _data_store(tmp_path / "data.zarr", {"training": 10})
    calls = []
    real = prompts.dominant_classes
    monkeypatch.setattr(prompts, "dominant_classes", lambda labels: calls.append(len(labels)) or real(labels))
    first = split_dominant_classes(data, "training")
    assert calls == [4, 4, 2]  # chunk by chunk
    assert split_dominant_classes(data, "training") is first and calls == [4, 4, 2]
