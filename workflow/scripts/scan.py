"""Rule scan: streaming closed-form ridge probes for every layer of one (model, prompt) -> CSV."""
from layerprobe import config as lp_config
from layerprobe import devices
from layerprobe import fingerprint as lp_fp
from layerprobe.job import job
from layerprobe.malloc import tune_malloc
from layerprobe.models import weights
from layerprobe.models.backbones import load_backbone
from layerprobe.scan.cost import scan_keys
from layerprobe.scan.run import prompts_filler, run_scan
from layerprobe.scan.settings import ScanSettings

with job(snakemake, "scan") as run:
    tune_malloc()  # reuse freed memory instead of page-faulting it back every batch (see docstring)
    name, prompt, model, cfg = run.model_name, snakemake.wildcards.prompt, run.model, run.config
    settings, data = ScanSettings.from_config(cfg), run.data_store()
    device = devices.use(cfg, "scan")  # scan.device, checked here; torch pinned to scan.threads
    backbone = load_backbone(name, model, device, **weights.loader_options(name, model, cfg, run.weights_manifest()))
    prompts_fn = prompts_filler(lp_config.prompt_text(model, prompt), data.attrs.get("class_names"),
                                lp_config.store_fill(model, prompt), model["category_seed"], data)
    table = run_scan(backbone, data, None, scan_keys(lp_config.spec(cfg, name).dims(), settings.layers), prompts_fn,
                     settings.lambdas, settings.batch_size, prompt=prompt, device=device,
                     max_stats_bytes=settings.max_stats_bytes, holdout_fraction=settings.holdout_fraction,
                     holdout_seed=settings.holdout_seed)
    table.to_csv(snakemake.output.table, index=False)
    lp_fp.write(snakemake.output.fingerprint, run.fingerprint)
