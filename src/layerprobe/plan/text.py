"""A plan as text: the tables `layerprobe plan` prints, and the one-look summary of a dry run."""

from __future__ import annotations

from typing import Any

from ..formatting import human_bytes
from .estimates import ASSUMPTIONS, Plan, plan


def _text_table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows] if r) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                                for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return [line(header), rule, *[line(r) if r else rule for r in rows]]


def _hours(value: float) -> str:
    """Hours for sums (GPU-hours): two decimals below 10, whole hours above."""
    if value == 0:
        return "0"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _duration(hours: float) -> str:
    """One job's expected time: minutes below an hour, hours above."""
    minutes = hours * 60
    if minutes < 1:
        return "< 1 min"
    return f"{minutes:.0f} min" if minutes < 60 else f"{hours:.1f} h"


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def format_plan(result: Plan) -> str:
    """A plain-text plan for the terminal."""
    t = result.totals
    n = sum(result.sizes.values())
    lines = [f"Images: {result.sizes['training']} training + {result.sizes['validation']} validation = {n} "
             f"({result.size_source}; dataset.max_images applied)",
             "Bytes: fp16, per layer images x tokens x dim x 2 B (+ images x dim x 2 B for a CLS array), plus the "
             "uint8 labels; GB = 10^9 B", "",
             "Feature stores on disk (<results>/features/{model}/{prompt}.zarr)"]
    rows = [[r.model, r.prompt, str(r.layers), f"{r.tokens} x {r.dim}", human_bytes(r.largest_layer_training_bytes),
             human_bytes(r.training_bytes), human_bytes(r.validation_bytes), human_bytes(r.bytes)]
            for r in result.stores.itertuples()]
    rows += [[], ["total", "", str(int(result.stores["layers"].sum())), "", "", "",
                  "", human_bytes(t["feature_bytes"])]]
    lines += _text_table(["model", "prompt", "layers", "tokens x dim", "1 layer, training", "training",
                          "validation", "store"], rows, {2, 4, 5, 6, 7})
    data = ", ".join(f"{r.resolution} px{' pad' if r.geometry == 'pad' else ''} {human_bytes(r.bytes)}"
                     for r in result.data.itertuples())
    lines += [f"Preprocessed data stores (uint8 images + labels, <results>/data/): {data}", "",
              "Per rule: RAM, GPUs and runtime each job requests (layerprobe.resources); hours expected from the "
              "assumed throughputs below"]
    rows = [[r.rule, r.model, str(r.jobs), _gb(r.mem_mb_per_job), str(r.gpus_per_job),
             f"{r.requested_runtime_h:g} h", _duration(r.hours_per_job), _hours(r.hours), _hours(r.gpu_hours),
             f"{r.ram_gb_hours:.1f}"] for r in result.rules.itertuples()]
    rows += [[], ["total", "", str(int(t["jobs"])), "", "", "", "", _hours(t["job_hours"]), _hours(t["gpu_hours"]),
                  f"{t['ram_gb_hours']:.1f}"]]
    lines += _text_table(["rule", "model", "jobs", "RAM/job", "GPUs/job", "runtime asked", "expected/job",
                          "job-hours", "GPU-hours", "RAM GB-hours"], rows, {2, 3, 4, 5, 6, 7, 8, 9})
    if not result.scan.empty:
        lines += ["", "Layer scan vs full extraction (the scan fits ridge probes while the model runs and writes one "
                  "CSV per store, no features)"]
        rows = [[r.model, r.prompt, str(r.scanned_layers), str(r.also_probed), human_bytes(r.full_extraction_bytes),
                 human_bytes(r.probed_bytes), human_bytes(r.bytes_saved_beyond_probed), str(r.training_passes)]
                for r in result.scan.itertuples()]
        rows += [[], ["total", "", "", "", human_bytes(t["scan_full_bytes"]), "",
                      human_bytes(t["scan_saved_bytes"]), ""]]
        lines += _text_table(["model", "prompt", "scanned", "probed", "extract all scanned", "extracted for probes",
                              "saved", "training passes"], rows, {2, 3, 4, 5, 6, 7})
    lines += ["", f"Total disk: {human_bytes(t['disk_bytes'])} (features {human_bytes(t['feature_bytes'])} + "
              f"preprocessed data {human_bytes(t['data_bytes'])})"
              + (f" of store.disk_quota_gb = {result.quota_gb:g} GB ({t['disk_bytes'] / (result.quota_gb * 1e9):.0%})"
                 if result.quota_gb else " (no store.disk_quota_gb set)"),
              f"Total GPU-hours: {_hours(t['gpu_hours'])}; job-hours {_hours(t['job_hours'])}; requested RAM x time "
              f"{t['ram_gb_hours']:.0f} GB-hours"]
    if not result.scan.empty:
        lines.append(f"Layer scan: extracting every scanned layer would take {human_bytes(t['scan_full_bytes'])}; "
                     f"the scan stores none of it, saving {human_bytes(t['scan_saved_bytes'])} beyond the layers "
                     "extracted for the probes anyway.")
    lines += billing_lines(result)
    lines += ["", "Assumed throughputs (edit layerprobe/plan/estimates.py; not measured):"]
    lines += [f"  {name}: {text}" for name, text in ASSUMPTIONS]
    if result.warnings:
        lines += [""] + result.warnings
    return "\n".join(lines)


def _units(value: float) -> str:
    return f"{value:,.0f}"


def billing_lines(result: Plan) -> list[str]:
    """Billing per rule and in total, probes on GPU vs CPU, and the seed's way, in billing units."""
    t, bill = result.totals, result.billing
    lines = ["", f"Billing (layerprobe.billing, SLURM's arithmetic): {bill.describe()}."]
    if bill.weights is None:
        lines.append("  Set cluster.billing_weights to your partition's TRESBillingWeights (scontrol show partition) "
                     "and cluster.max_tres if PriorityFlags has MAX_TRES; until then CPU=1, as SLURM's default.")
    lines.append("  billing/job is the job's billing= (scontrol, sacct); billing-hours = billing x expected hours, "
                 "what fairshare usage adds")
    rows = [[r.rule, r.model, str(r.jobs), str(r.cpus_per_job), _gb(r.mem_mb_per_job), str(r.gpus_per_job),
             _units(r.billing_per_job), _units(r.billing_hours)] for r in result.rules.itertuples()]
    rows += [[], ["total", "", str(int(t["jobs"])), "", "", "", "", _units(t["billing_hours"])]]
    lines += _text_table(["rule", "model", "jobs", "CPUs/job", "RAM/job", "GPUs/job", "billing/job",
                          "billing-hours"], rows, {2, 3, 4, 5, 6, 7})
    if result.devices is not None and len(result.devices):
        lines += ["", "Probes on a GPU vs on CPU nodes (probe.device; everything else as configured):"]
        rows = [[d.device, str(d.probe_threads), _gb(d.probe_mem_mb), _hours(d.probe_hours), _hours(d.probe_gpu_hours),
                 _units(d.probe_billing_hours), _hours(d.gpu_hours), _units(d.billing_hours)]
                for d in result.devices.itertuples()]
        lines += _text_table(["probes on", "CPUs/probe", "RAM/probe (max)", "probe job-hours", "probe GPU-hours",
                              "probe billing-hours", "total GPU-hours", "total billing-hours"], rows,
                             {1, 2, 3, 4, 5, 6, 7})
        by = result.devices.set_index("device")["billing_hours"]
        cheap, dear = ("cpu", "cuda") if by["cpu"] < by["cuda"] else ("cuda", "cpu")
        lines.append(f"  Cheaper: probes on {'CPU nodes' if cheap == 'cpu' else 'GPUs'} (probe.device: {cheap}), "
                     f"{_units(by[cheap])} against {_units(by[dear])} billing-hours"
                     + (f" ({by[dear] / by[cheap]:.2f}x)." if by[cheap] > 0 else "."))
    if result.seed is not None and len(result.seed):
        lines += ["", "The seed's way, for comparison: each GPU probe holding its whole layer (training + validation, "
                  "fp16) in RAM, for the same hours"]
        rows = [[r.model, str(r.jobs), _gb(r.mem_mb_per_job), _units(r.billing_per_job), _units(r.billing_hours)]
                for r in result.seed.itertuples()]
        seed_total = result.seed["billing_hours"].sum()
        planned = result.rules.loc[result.rules["rule"] == "probe", "billing_hours"].sum()
        rows += [[], ["total", str(int(result.seed["jobs"].sum())), "", "", _units(seed_total)]]
        lines += _text_table(["model", "jobs", "RAM/job (max)", "billing/job (max)", "billing-hours"], rows,
                             {1, 2, 3, 4})
        lines.append(f"  The seed's way: {_units(seed_total)} billing-hours; this plan's probes: {_units(planned)}"
                     + (f" (the seed's way costs {seed_total / planned:.1f}x)." if planned > 0 else "."))
    return lines


def summary(config: dict[str, Any]) -> str:
    """A few lines for a Snakemake dry run (cheap: arithmetic only, no data read). Never raises:
    a dry run must not fail because of its summary."""
    try:
        result = plan(config)
    except Exception as err:  # noqa: BLE001 - the summary is informational
        return f"layerprobe plan: not available ({type(err).__name__}: {err})"
    t = result.totals
    quota = (f" of {result.quota_gb:g} GB quota ({t['disk_bytes'] / (result.quota_gb * 1e9):.0%})"
             if result.quota_gb else "")
    lines = [f"layerprobe plan: {len(result.stores)} feature store(s), {human_bytes(t['feature_bytes'])} of features "
             f"+ {human_bytes(t['data_bytes'])} preprocessed data = {human_bytes(t['disk_bytes'])} on disk{quota}; "
             f"~{_hours(t['gpu_hours'])} GPU-hours (assumed throughputs; images: {result.size_source}).",
             "  Details: layerprobe plan --configfile <this config>"]
    return "\n".join(lines + [f"  {w}" for w in result.warnings if w.startswith("WARNING")])


