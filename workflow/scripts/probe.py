"""Rule probe: train one linear probe (resuming from its own checkpoint) and write its metrics."""
from pathlib import Path

import torch

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe.models.backbones import resolve_device
from layerprobe.models.layers import parse_probe_id, probe_seed
from layerprobe.logs import redirect_output
from layerprobe.probing.probe import ProbeSettings, train_probe
from layerprobe.features.store import check_layer, open_store

torch.set_num_threads(snakemake.threads)  # see the rule: same reductions under every executor

with redirect_output(snakemake.log[0]):
    cfg = lp_config.validate(snakemake.config)
    name, prompt, probe_id = snakemake.wildcards.model, snakemake.wildcards.prompt, snakemake.wildcards.probe
    key, concat_cls = parse_probe_id(probe_id)
    fingerprint = lp_fp.expect(lp_fp.probe(cfg, name, prompt, probe_id), snakemake.params.fingerprint,
                               snakemake.output.metrics)
    check_layer(open_store(snakemake.params.store), key, lp_fp.layer(cfg, name, prompt, key), snakemake.params.store)
    probe = cfg["probe"]
    settings = ProbeSettings(epochs=probe["epochs"], lr=probe["lr"], weight_decay=probe["weight_decay"],
                             batch_size=probe["batch_size"], seed=probe_seed(probe_id, probe["seeds"]),
                             batchnorm=probe["batchnorm"],
                             concat_cls=concat_cls, ram_budget_bytes=probe["ram_budget_mb"] * 2**20,
                             device=resolve_device(probe["device"]),
                             checkpoint_every_batches=probe["checkpoint_every_batches"],
                             loader_mode=probe["loader_mode"], shuffle_window_chunks=probe["shuffle_window_chunks"])
    train_probe(snakemake.params.store, key, settings, Path(snakemake.output.metrics).parent,
                snakemake.params.checkpoint, probe["saved_predictions"], fingerprint, probe_id)
