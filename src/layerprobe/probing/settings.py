"""A probe's settings, named once: the schema's `probe.*` keys, this class, and the fingerprint.

Each field that shapes a probe's numbers carries its config key (`shapes`); `fingerprint_inputs`
gives exactly those, so the fingerprint (layerprobe.fingerprint.probe) is derived from this class
and a new setting cannot be left out of it. Where the probe trains (`device`, `threads`) is
resolved by layerprobe.devices and recorded by `placement`: the device type, and the threads on
the CPU, where they change float sums. The other fields are settings of the machine: they decide
speed and memory, never a number, and no fingerprint holds them. Torch-free: the DAG uses it.
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
    # Where it trains: resolved from the config (layerprobe.devices) by from_config; in the
    # fingerprint as the device type, with the threads on the CPU (`placement`).
    device: str = "cpu"
    threads: int = 1
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
        from .. import devices

        given = {f.name: probe[f.name] for f in fields(cls) if f.name in probe and f.name not in PLACED}
        return cls(**given, seed=probe_seed(probe_id, probe["seeds"]), concat_cls=concat_cls,
                   ram_budget_bytes=probe["ram_budget_mb"] * 2**20, device=devices.resolved(config, "probe"),
                   threads=devices.threads(config, "probe"))

    def fingerprint_inputs(self) -> dict[str, Any]:
        """{config key: value} of every setting that shapes the probe's numbers."""
        shaped = {f.metadata["config"]: getattr(self, f.name) for f in fields(self) if "config" in f.metadata}
        return {**shaped, **self.placement()}

    def placement(self) -> dict[str, Any]:
        """The device type, and on the CPU the threads: they change float sums, so the numbers."""
        device = self.device.split(":")[0]
        return {"probe.device": device, **({"probe.threads": self.threads} if device == "cpu" else {})}


PLACED = ("device", "threads")  # resolved by layerprobe.devices, not copied from the config
