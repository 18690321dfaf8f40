"""Rule probe: train one linear probe (resuming from its checkpoint) and write its metrics."""
from pathlib import Path

import torch

from layerprobe import config as lp_config
from layerprobe.backbones import resolve_device
from layerprobe.logs import redirect_output
from layerprobe.probe import ProbeSettings, train_probe

torch.set_num_threads(snakemake.threads)  # see the rule: same reductions under every executor

with redirect_output(snakemake.log[0]):
    cfg = lp_config.validate(snakemake.config)
    probe = cfg["probe"]
    model = cfg["models"][snakemake.wildcards.model]
    settings = ProbeSettings(epochs=probe["epochs"], lr=probe["lr"], weight_decay=probe["weight_decay"],
                             batch_size=probe["batch_size"], seed=probe["seed"], batchnorm=probe["batchnorm"],
                             concat_cls=model["concat_cls"], ram_budget_bytes=probe["ram_budget_mb"] * 2**20,
                             device=resolve_device(probe["device"]),
                             checkpoint_every_batches=probe["checkpoint_every_batches"],
                             loader_mode=probe["loader_mode"])
    train_probe(snakemake.params.store, snakemake.wildcards.layer, settings,
                Path(snakemake.output.metrics).parent, snakemake.params.checkpoint,
                cfg["report"]["qualitative_images"])
