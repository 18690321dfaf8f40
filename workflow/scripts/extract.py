"""Rule extract: one part of a (model, prompt) feature store; resumes from finished chunks."""
import json
import time

from layerprobe import config as lp_config
from layerprobe.backbones import load_backbone
from layerprobe.data import open_data
from layerprobe.extract import run_part
from layerprobe.logs import redirect_output

with redirect_output(snakemake.log[0]):
    cfg = lp_config.validate(snakemake.config)
    name, prompt = snakemake.wildcards.model, snakemake.wildcards.prompt
    data = open_data(json.load(open(snakemake.input.data))["store"])
    start = time.time()
    backbone = load_backbone(name, cfg["models"][name], cfg["probe"]["device"])
    stats = run_part(name, cfg["models"][name], prompt, backbone, data, snakemake.params.store,
                     int(snakemake.wildcards.part), snakemake.params.parts, cfg["store"]["chunk_images"],
                     cfg["store"]["shuffle_seed"])
    stats["seconds"] = time.time() - start
    with open(snakemake.output[0], "w") as f:
        json.dump(stats, f, indent=2)
