"""Rule scan: streaming closed-form ridge probes for every layer of one (model, prompt) -> CSV."""
import json

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe.models import weights
from layerprobe.models.backbones import load_backbone, resolve_device
from layerprobe.data.preprocess import open_data
from layerprobe.logs import redirect_output
from layerprobe.scan.run import prompts_filler, run_scan, tune_malloc
from layerprobe.scan.cost import scan_keys

with redirect_output(snakemake.log[0]):
    tune_malloc()  # reuse freed memory instead of page-faulting it back every batch (see docstring)
    cfg = lp_config.validate(snakemake.config)
    name, prompt = snakemake.wildcards.model, snakemake.wildcards.prompt
    model, settings = cfg["models"][name], cfg["scan"]
    fingerprint = lp_fp.expect(lp_fp.scan(cfg, name, prompt), snakemake.params.fingerprint, snakemake.output.table)
    data = open_data(json.load(open(snakemake.input.data))["store"])
    device = resolve_device(cfg["probe"]["device"])
    backbone = load_backbone(name, model, device, **weights.loader_options(name, model, cfg))
    keys = scan_keys(lp_config.spec(cfg, name).dims(), settings["layers"])
    prompts_fn = prompts_filler(lp_config.prompt_text(model, prompt), data.attrs.get("class_names"),
                                lp_config.store_fill(model, prompt), model["category_seed"], data)
    max_mb = settings["max_stats_mb"]  # null: every layer in one fit pass
    table = run_scan(backbone, data, None, keys, prompts_fn, settings["lambdas"], settings["batch_size"],
                     prompt=prompt, device=device, max_stats_bytes=None if max_mb is None else int(max_mb * 2**20),
                     holdout_fraction=settings["holdout_fraction"], holdout_seed=settings["holdout_seed"])
    table.to_csv(snakemake.output.table, index=False)
    lp_fp.write(snakemake.output.fingerprint, fingerprint)
