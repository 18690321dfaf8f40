"""The layer scan's settings, named once: the schema's `scan.*` keys, this class and the fingerprint.

`fingerprint_inputs` gives the keys that shape the scan's table; `max_stats_mb` decides only how
many training passes the statistics take (memory), never a number. Torch-free: the DAG uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def shapes(key: str, **kwargs: Any) -> Any:
    return field(metadata={"config": key}, **kwargs)


@dataclass
class ScanSettings:
    lambdas: list[float] = shapes("scan.lambdas")
    batch_size: int = shapes("scan.batch_size")
    layers: str | list[str] = shapes("scan.layers")
    holdout_fraction: float = shapes("scan.holdout_fraction")
    holdout_seed: int = shapes("scan.holdout_seed")
    max_stats_mb: float | None = None  # memory only: layers fitted in groups above it

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ScanSettings":
        scan = config["scan"]
        return cls(**{f.name: scan[f.name] for f in fields(cls)})

    @property
    def max_stats_bytes(self) -> int | None:
        return None if self.max_stats_mb is None else int(self.max_stats_mb * 2**20)

    def fingerprint_inputs(self) -> dict[str, Any]:
        return {f.metadata["config"]: getattr(self, f.name) for f in fields(self) if "config" in f.metadata}
