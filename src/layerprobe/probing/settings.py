"""A probe's settings, named once: the schema's `probe.*` keys, this class, and the fingerprint.

Each field that shapes a probe's numbers carries its config key (`shapes`); `fingerprint_inputs`
gives exactly those, so the fingerprint (layerprobe.fingerprint.probe) is derived from this class
and a new setting cannot be left out of it. The other fields are settings of the machine: they
decide speed and memory, never a number, and no fingerprint holds them. Torch-free: the DAG uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..features.epoch_order import DEFAULT_WINDOW_CHUNKS


def shapes(key: str, **kwargs: Any) -> Any:
    """A field that shapes the probe's numbers: recorded in its fingerprint under config `key`."""
    return field(metadata={"config": key}, **kwargs)


@dataclass
class ProbeSettings:
    epochs: int = shapes("probe.epochs")
    lr: float = shapes("probe.lr")
    weight_decay: float = shapes("probe.weight_decay")
    batch_size: int = shapes("probe.batch_size")
    seed: int = shapes("probe.seed")
    batchnorm: bool = shapes("probe.batchnorm")
    concat_cls: bool = shapes("probe.concat_cls")
    ram_budget_bytes: int = 8192 * 2**20
    device: str = shapes("probe.device", default="cpu")  # the config's value; the trainer resolves `auto`
    checkpoint_every_batches: int = 200
    loader_mode: str = "auto"  # auto | resident | chunks (layerprobe.features.loader)
    shuffle_window_chunks: int = shapes("probe.shuffle_window_chunks", default=DEFAULT_WINDOW_CHUNKS)
    saved_predictions: int = shapes("probe.saved_predictions", default=8)

    @classmethod
    def from_config(cls, config: dict[str, Any], probe_id: str) -> "ProbeSettings":
        """The settings of one probe (`layer_NN[+cls][-seedS]`) of a validated config."""
        from ..models.layers import parse_probe_id, probe_seed

        probe = config["probe"]
        _, concat_cls = parse_probe_id(probe_id)
        given = {f.name: probe[f.name] for f in fields(cls) if f.name in probe}
        return cls(**given, seed=probe_seed(probe_id, probe["seeds"]), concat_cls=concat_cls,
                   ram_budget_bytes=probe["ram_budget_mb"] * 2**20)

    def fingerprint_inputs(self) -> dict[str, Any]:
        """{config key: value} of every setting that shapes the probe's numbers."""
        return {f.metadata["config"]: getattr(self, f.name) for f in fields(self) if "config" in f.metadata}
