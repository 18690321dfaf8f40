"""Rule probe: train one linear probe (resuming from its own checkpoint) and write its metrics."""
from pathlib import Path

from layerprobe import devices
from layerprobe import fingerprint as lp_fp
from layerprobe.features.store import check_layer, open_store
from layerprobe.job import job
from layerprobe.malloc import keep_freed_memory
from layerprobe.models.layers import parse_probe_id
from layerprobe.probing.probe import train_probe
from layerprobe.probing.settings import ProbeSettings

with job(snakemake, "probe") as run:
    # CUDA checked; torch pinned to probe.threads: the same sums under every executor.
    if devices.use(run.config, "probe") == "cpu":
        keep_freed_memory()  # the step's multi-GB logits reuse their pages (layerprobe.malloc)
    prompt, probe_id = snakemake.wildcards.prompt, snakemake.wildcards.probe
    key, _ = parse_probe_id(probe_id)
    check_layer(open_store(snakemake.params.store), key, lp_fp.layer(run.config, run.model_name, prompt, key),
                snakemake.params.store)
    train_probe(snakemake.params.store, key, ProbeSettings.from_config(run.config, probe_id),
                Path(snakemake.output.metrics).parent, snakemake.params.checkpoint, run.fingerprint, probe_id)
