"""Progress bars with rate and ETA that stay readable in rule log files."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """tqdm that prints a new line now and then when stderr is a log file, not a terminal."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=interactive,
                mininterval=0.5 if interactive else 10.0, ascii=not interactive)
