"""Prompt templates for LLaVA: placeholder checks, per-image `{category}` filling, chat wrapping.

A template may only use `{category}`. How it is filled per image is the prompt's *fill*:

- `dominant`: the image's own dominant ground-truth class (largest labelled area, ties to the
  smaller id). An oracle: the answer is in the prompt, on the validation split too.
- `shuffled`: the dominant class of another image of the same split (a seeded derangement of
  the split's rows): the same classes in the same proportions, on the wrong images.
- `random`: a class name drawn uniformly per image, seeded.
- `none`: the placeholder is dropped (its surrounding spaces collapsed).

Every fill is a function of (split, data-store row) and the seed only, never of batching, of
which extraction part runs or of scan vs extraction. The filled text is then wrapped in the
model's chat format, whose `{prompt}` and `<image>` order decides what image tokens can see.
"""

from __future__ import annotations

import logging
import re
import string
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

PLACEHOLDERS = {"category"}
IMAGE_TOKEN = "<image>"  # where prompt_format puts the image
IMAGE_FIRST = "USER: <image>\n{prompt} ASSISTANT:"
PROMPT_FIRST = "USER: {prompt}\n<image> ASSISTANT:"
DEFAULT_FORMAT = IMAGE_FIRST
NO_CATEGORY = "object"  # used when an image has no labelled pixel
DOMINANT = "dominant"
FILLS = (DOMINANT, "shuffled", "random", "none")
SEEDED_FILLS = ("shuffled", "random")  # the fills `category_seed` shapes
IGNORE = 255
# Seed streams, so a fill's draws never coincide with another seeded draw (e.g. the store order,
# seeded with [store.shuffle_seed, split]) even when the seeds are equal.
_SPLITS = ("training", "validation")  # store.SPLITS order
_SHUFFLED_STREAM, _RANDOM_STREAM = 1, 2
# Gets (split, labels (B, H, W) uint8, data-store rows (B,)) and returns one prompt per image.
PromptFiller = Callable[[str, np.ndarray, np.ndarray], list[str]]
log = logging.getLogger("layerprobe.prompts")


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


def dominant_class(label: np.ndarray, ignore: int = IGNORE) -> int | None:
    """Class id with the largest pixel count, ignoring `ignore`; ties go to the smallest id."""
    counts = np.bincount(np.asarray(label, dtype=np.int64).ravel(), minlength=ignore + 1)
    if ignore < counts.size:
        counts[ignore] = 0
    if not counts.any():
        return None
    return int(np.argmax(counts))  # argmax returns the first (smallest) id among ties


def dominant_classes(labels: np.ndarray, ignore: int = IGNORE) -> np.ndarray:
    """`dominant_class` of every image of a batch (B, H, W) at once; -1 where nothing is labelled."""
    flat = np.asarray(labels).reshape(len(labels), -1)
    if flat.size == 0:
        return np.full(len(flat), -1, dtype=np.int64)
    bins = max(ignore + 1, int(flat.max()) + 1)
    # One bincount over the batch: image i's pixels counted in bins [i * bins, (i + 1) * bins).
    offsets = np.arange(len(flat), dtype=np.int64)[:, None] * bins
    counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * bins).reshape(len(flat), bins)
    counts[:, ignore] = 0
    classes = counts.argmax(1)  # the first (smallest) id among ties, as dominant_class
    classes[counts.max(1) == 0] = -1
    return classes


def fill_template(text: str, category: str | None) -> str:
    """`text` with `{category}` replaced by `category`, or dropped (None) with the spaces around
    it collapsed: "Describe the {category} in it" -> "Describe the in it"."""
    if "category" not in placeholders(text):
        return text.format()  # still unescapes `{{`/`}}`, like the filled case
    if category is not None:
        return text.format(category=category)
    gap = "\x00"  # cannot occur in a YAML template's text
    dropped = re.sub(rf"[ \t]*{gap}[ \t]*(?=([,.;:!?])?)", lambda m: "" if m.group(1) else " ",
                     text.format(category=gap))
    return dropped.strip()


def fill_prompt(text: str, label: np.ndarray, class_names: Sequence[str]) -> str:
    """Fill `{category}` with the image's dominant class name ("object" if nothing is labelled)."""
    if "category" not in placeholders(text):
        return text.format()
    cls = dominant_class(label)
    return fill_template(text, NO_CATEGORY if cls is None else class_names[cls])


# --------------------------------------------------------------------------------------------
# The controls: shuffled and random fills, by data-store row
# --------------------------------------------------------------------------------------------

def _seed(seed: int, split: str, stream: int, *more: int) -> list[int]:
    return [seed, _SPLITS.index(split), stream, *more]


@lru_cache(maxsize=8)
def donor_rows(n: int, seed: int, split: str) -> np.ndarray:
    """donor[row]: the row whose dominant class image `row` gets under the `shuffled` fill.

    A cyclic shift of a seeded permutation: every row gets another row's class (a derangement)
    and every row gives its class exactly once, so the classes keep their marginal counts."""
    if n < 2:
        raise ValueError(f"category_fill shuffled needs at least 2 images in the {split} split, it has {n}")
    order = np.random.default_rng(_seed(seed, split, _SHUFFLED_STREAM)).permutation(n)
    donors = np.empty(n, dtype=np.int64)
    donors[order] = np.roll(order, -1)
    donors.flags.writeable = False  # shared through the cache
    return donors


def random_classes(rows: np.ndarray, seed: int, split: str, num_classes: int) -> np.ndarray:
    """A class id drawn uniformly per data-store row, from its own seed: a row's draw depends on
    nothing but (seed, split, row)."""
    return np.array([np.random.default_rng(_seed(seed, split, _RANDOM_STREAM, int(row))).integers(num_classes)
                     for row in rows], dtype=np.int64)


_SPLIT_CLASSES: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}


def split_dominant_classes(data: Any, split: str) -> np.ndarray:
    """The dominant class of every image of a data-store split (-1: nothing labelled), read chunk
    by chunk; computed once per process and data store (the `shuffled` fill needs every row's)."""
    labels = data[f"{split}/labels"]
    key = (str(getattr(labels, "store_path", id(labels))), tuple(labels.shape))
    if key not in _SPLIT_CLASSES:
        start, step = time.perf_counter(), int(labels.chunks[0])
        parts = [dominant_classes(labels[i:i + step]) for i in range(0, labels.shape[0], step)]
        classes = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        classes.flags.writeable = False
        _SPLIT_CLASSES[key] = classes
        log.info("dominant classes of %d %s images read in %.1f s (for the shuffled fill)", len(classes), split,
                 time.perf_counter() - start)
    return _SPLIT_CLASSES[key]


def forget_split_classes() -> None:
    """Drop cached split classes (a long-lived process whose data store was rewritten in place)."""
    _SPLIT_CLASSES.clear()


def category_classes(fill: str, split: str, labels: np.ndarray, rows: np.ndarray, num_classes: int, seed: int,
                     data: Any = None) -> np.ndarray:
    """The class id each image's `{category}` is filled with (-1: no labelled pixel).

    labels: the images' (B, H, W) labels; rows: their data-store rows in `split`; data: the data
    store (only `shuffled` reads it: a donor may be any image of the split)."""
    rows = np.asarray(rows, dtype=np.int64)
    if fill == DOMINANT:
        return dominant_classes(labels)
    if fill == "shuffled":
        if data is None:
            raise ValueError("category_fill shuffled needs the data store: a donor may be any image of the split")
        classes = split_dominant_classes(data, split)
        return classes[donor_rows(len(classes), seed, split)[rows]]
    if fill == "random":
        return random_classes(rows, seed, split, num_classes)
    raise ValueError(f"category_fill {fill!r}: no class to fill (one of {list(FILLS)})")


def fill_prompts(text: str, fill: str | None, split: str, labels: np.ndarray, rows: np.ndarray,
                 class_names: Sequence[str], seed: int = 0, data: Any = None) -> list[str]:
    """One filled prompt per image (`fill` is ignored for a template without `{category}`)."""
    if "category" not in placeholders(text) or fill == "none":
        return [fill_template(text, None)] * len(rows)
    classes = category_classes(fill, split, labels, rows, len(class_names), seed, data)
    return [fill_template(text, NO_CATEGORY if c < 0 else class_names[c]) for c in classes]


def prompt_filler(text: str, fill: str | None, class_names: Sequence[str], seed: int = 0,
                  data: Any = None) -> PromptFiller:
    """The prompt hook extraction and the scan share: (split, labels, rows) -> filled prompts."""
    names = list(class_names)
    return lambda split, labels, rows: fill_prompts(text, fill, split, labels, rows, names, seed, data)


def wrap_prompt(text: str, prompt_format: str = DEFAULT_FORMAT) -> str:
    """Put the (filled) prompt into the chat format; `<image>` stays for the processor to expand."""
    if "{prompt}" not in prompt_format or IMAGE_TOKEN not in prompt_format:
        raise ValueError(f"prompt_format must contain {{prompt}} and <image>: {prompt_format!r}")
    # Plain replace, not str.format: the prompt text may itself contain braces.
    return prompt_format.replace("{prompt}", text)
