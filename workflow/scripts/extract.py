"""Rule extract: one part of a (model, prompt) feature store; writes only the missing (chunk, layer) pairs."""
import json
import time

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe.models import weights
from layerprobe.models.backbones import compute_precision, load_backbone, resolve_device
from layerprobe.data.preprocess import open_data
from layerprobe.features.extract import extract_part, make_layout
from layerprobe.logs import redirect_output

with redirect_output(snakemake.log[0]):
    cfg = lp_config.validate(snakemake.config)
    name, prompt = snakemake.wildcards.model, snakemake.wildcards.prompt
    model = cfg["models"][name]
    fingerprint = lp_fp.expect(lp_fp.store(cfg, name, prompt), snakemake.params.fingerprint, snakemake.params.store)
    data = open_data(json.load(open(snakemake.input.data))["store"])
    layout = make_layout(name, model, prompt, data, cfg["store"]["chunk_images"], cfg["store"]["shuffle_seed"],
                         fingerprint, cache_dir=cfg["weights"]["cache_dir"])
    keys = json.load(open(snakemake.input.layout))["keys"]  # what prepare_store made room for
    start = time.time()
    options = weights.loader_options(name, model, cfg)  # offline: checks the cache before any work
    device = resolve_device(cfg["probe"]["device"])
    stats = extract_part(lambda: load_backbone(name, model, device, **options), data,
                         snakemake.params.store, layout, keys, int(snakemake.wildcards.part), snakemake.params.parts,
                         model["batch_size"], precision=compute_precision(model, device))
    stats["seconds"] = time.time() - start
    with open(snakemake.output[0], "w") as f:
        json.dump(stats, f, indent=2)
