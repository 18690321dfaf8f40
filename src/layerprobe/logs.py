"""Route a rule script's stdout, stderr and logging into its Snakemake log file."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def redirect_output(path: str | Path | None) -> Iterator[None]:
    """Everything printed (progress bars, the epoch lines, tracebacks) goes to the log."""
    if path is None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=log, force=True)
        try:
            yield
        except BaseException:
            logging.getLogger("layerprobe").exception("failed")
            raise
