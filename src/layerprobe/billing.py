"""A job's SLURM billing, computed as slurmctld computes it: the number fairshare is made of.

Config: `cluster.billing_weights`, the partition's `TRESBillingWeights` string verbatim (e.g.
"CPU=1.0,Mem=0.25G,GRES/gpu=2.0"), and `cluster.max_tres` for `PriorityFlags=MAX_TRES`. The
semantics below are read from SLURM's source (SchedMD/slurm, tag slurm-22-05-8-1, the version of
the test suite's cluster; unchanged in master for these flags) and slurm.conf(5):

- Parsing (`_tres_weight_item`, src/common/slurm_protocol_api.c): items `TYPE[/NAME]=VALUE[UNIT]`
  separated by commas, TRES names case-insensitive, VALUE read by strtod, UNIT one of K M G T P
  (case-insensitive; only its first letter is read). The weight is divided by 1024^(unit - base),
  where the base unit is MB for `Mem` (and `BB`), none for everything else; a unit at or below the
  base divides by nothing. So `Mem=0.25G` is 0.25 per GB = 0.25/1024 per MB, `Mem=2` is 2 per
  MB, and `Mem=2K` is also 2 per MB.
- The sum (`assoc_mgr_tres_weighted`, src/common/assoc_mgr.c): no weights at all -> billing =
  the job's CPUs. Otherwise, in TRES order (cpu, mem, energy, node, ..., gres/*), each count times
  its weight (memory counted in MB; unweighted TRES weigh 0). Without MAX_TRES: all summed. With
  `PriorityFlags=MAX_TRES`: the largest of the node TRES (cpu, mem, node, every gres) plus the sum
  of the others (global TRES: licenses, burst buffers, ...; zero for this workflow's jobs).
- Rounding: the result, a double, is stored in the job's integer TRES array (`tres_alloc_cnt`,
  uint64_t), i.e. truncated toward zero: `scontrol show job`'s `billing=` and sacct's.

A job here counts cpu = its `threads` (cpus_per_task), mem = its `mem_mb` (--mem, per node, one
node), node = 1 and gres/gpu = its GPUs (`layerprobe.resources`); every other TRES is 0. What the
plan cannot see: a node with ThreadsPerCore > 1 may allocate CPUs in whole cores, and typed GRES
weights (`GRES/gpu:a100`) depend on the profile's gpu_model; the latter are refused here.
Billing is a rate: fairshare's raw usage adds billing x elapsed seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

KEY = "cluster.billing_weights"
# TRES types SLURM knows; Mem and BB weights are per MB (their base unit).
PLAIN_TYPES = ("cpu", "mem", "energy", "node", "billing", "vmem", "pages")
NAMED_TYPES = ("gres", "license", "bb", "fs", "ic")
UNITS = "KMGTP"  # SLURM's get_unit_type: K=1, M=2 (MB's), G=3, T=4, P=5
BASE = {"mem": 2, "bb": 2}
NODE_TRES = ("cpu", "mem", "node")  # plus every gres: MAX_TRES's node TRES
_VALUE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([A-Za-z]*)$")


class BillingWeightsError(ValueError):
    """A TRESBillingWeights string SLURM would refuse (or one the plan cannot price)."""


@dataclass(frozen=True)
class Billing:
    """Parsed weights (TRES name -> weight per unit, memory per MB) and the MAX_TRES flag.
    `weights is None`: none configured, SLURM's default (billing = CPUs)."""

    weights: dict[str, float] | None
    max_tres: bool = False
    text: str | None = None

    def job(self, cpus: int, mem_mb: int, gpus: int) -> int:
        """billing= of one job on one node: what scontrol and sacct show for it."""
        counts = {"cpu": cpus, "mem": mem_mb, "node": 1, "gres/gpu": gpus}
        if self.weights is None:
            return int(counts["cpu"])
        node, total = 0.0, 0.0  # to_bill_node, to_bill_global
        for name in _tres_order(self.weights):
            if name == "billing":
                continue  # SLURM skips the billing TRES itself
            value = float(counts.get(name, 0)) * self.weights[name]
            if self.max_tres and (name in NODE_TRES or name.startswith("gres/")):
                node = max(node, value)
            else:
                total += value
        return int(node + total)  # a double into uint64_t: truncation

    def describe(self) -> str:
        if self.weights is None:
            return "no cluster.billing_weights: SLURM's default, billing = the job's CPUs"
        rule = "MAX_TRES: the largest node TRES (cpu, mem, node, gres) + the others" if self.max_tres \
            else "the sum over TRES"
        return f"TRESBillingWeights={self.text} ({rule}; mem in MB, truncated to an integer)"


def _tres_order(weights: dict[str, float]) -> list[str]:
    """SLURM's TRES array order: cpu, mem, energy, node, billing, (fs/disk, vmem, pages), then the rest."""
    fixed = ["cpu", "mem", "energy", "node", "billing", "fs/disk", "vmem", "pages"]
    return [n for n in fixed if n in weights] + [n for n in weights if n not in fixed]


def parse(text: str | None) -> dict[str, float] | None:
    """TRESBillingWeights -> {tres name (lower case): weight per unit}; None or "" -> None."""
    if text is None or not str(text).strip():
        return None
    weights: dict[str, float] = {}
    for item in str(text).split(","):
        if not item.strip():
            continue  # strtok_r skips empty tokens
        name, sep, value = item.strip().partition("=")
        if not sep or not value:
            raise BillingWeightsError(f"{item!r} is not TYPE=VALUE")
        name = name.strip().lower()
        kind, _, sub = name.partition("/")
        if kind in NAMED_TYPES and sub:
            if kind == "gres" and ":" in sub:
                raise BillingWeightsError(f"{item!r}: typed GRES weights depend on the profile's gpu_model, which "
                                          "the plan does not see; weight GRES/gpu")
        elif kind not in PLAIN_TYPES or sub:
            raise BillingWeightsError(f"{item!r}: {name!r} is not a TRES type SLURM knows (CPU, Mem, Node, Energy, "
                                      "VMem, Pages, GRES/<name>, License/<name>, BB/<name>, FS/<name>)")
        match = _VALUE.match(value.strip())
        if not match:
            raise BillingWeightsError(f"{item!r}: the weight is not a number with an optional unit K, M, G, T, P")
        weight, unit = float(match.group(1)), match.group(2)
        if unit:
            if unit[0].upper() not in UNITS:
                raise BillingWeightsError(f"{item!r}: unit {unit!r} is not one of K, M, G, T, P")
            steps = UNITS.index(unit[0].upper()) + 1 - BASE.get(kind, 0)
            if steps > 3:
                raise BillingWeightsError(f"{item!r}: a unit of 1024^{steps} overflows SLURM's conversion")
            if steps > 0:
                weight /= 1024 ** steps
        weights[name] = weight
    return weights or None


def from_config(config: dict[str, Any]) -> Billing:
    """The config's billing (validated configs have `cluster`)."""
    cluster = config.get("cluster") or {}
    text = cluster.get("billing_weights")
    return Billing(parse(text), bool(cluster.get("max_tres", False)), text)
