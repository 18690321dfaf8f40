"""One context for every workflow script: its rule's log, the validated config, the job's
fingerprint checked against the one Snakemake planned with, and the inputs scripts share.

    with job(snakemake, "store") as run:
        data = run.data_store()
        ...

A script is then only what its rule does; the validate -> fingerprint -> check preamble, and
where its paths come from (`snakemake.input`, `.output`, `.params`), are the same everywhere.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as lp_config
from .fingerprint import Fingerprint, expect, for_job
from .logs import redirect_output


@dataclass
class Job:
    snakemake: Any  # the `snakemake` object Snakemake gives a script
    config: dict[str, Any]  # validated, defaults filled
    fingerprint: Fingerprint | None  # the artefact's, as planned (None for a rule without one)

    @property
    def wildcards(self) -> Any:
        return self.snakemake.wildcards

    @property
    def model_name(self) -> str:
        return self.wildcards.model

    @property
    def model(self) -> dict[str, Any]:
        return self.config["models"][self.model_name]

    def data_store(self) -> Any:
        """The data store this job reads, opened from its data manifest (input `data`)."""
        from .data.preprocess import open_data

        return open_data(json.loads(Path(self.snakemake.input.data).read_text())["store"])

    def weights_manifest(self) -> str | None:
        """The fetch_weights manifest among the inputs (input `model`), if the model has one."""
        given = getattr(self.snakemake.input, "model", [])
        files = [given] if isinstance(given, str) else [str(f) for f in given]  # one file comes as a str
        manifests = [f for f in files if f.endswith(".json") and not f.endswith(".built")]
        return manifests[0] if manifests else None


@contextlib.contextmanager
def job(snakemake: Any, stage: str | None = None) -> Iterator[Job]:
    """Log to the rule's log; validate the config; with a `stage` (fingerprint.for_job), compute
    the job's fingerprint and refuse to run if it is not the one the job was planned with."""
    with redirect_output(snakemake.log[0]):
        config = lp_config.validate(snakemake.config)
        fingerprint = None
        if stage is not None:
            made = getattr(snakemake.params, "store", None) or snakemake.output[0]
            fingerprint = expect(for_job(stage, config, snakemake.wildcards), snakemake.params.fingerprint, made)
        yield Job(snakemake, config, fingerprint)
