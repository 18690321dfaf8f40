"""Rule prepare_store: create, extend or discard one feature store, before any part writes to it."""
import json

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe.features import store
from layerprobe.data.preprocess import open_data
from layerprobe.features.extract import make_layout
from layerprobe.logs import redirect_output

with redirect_output(snakemake.log[0]):
    cfg = lp_config.validate(snakemake.config)
    name, prompt = snakemake.wildcards.model, snakemake.wildcards.prompt
    fingerprint = lp_fp.expect(lp_fp.store(cfg, name, prompt), snakemake.params.fingerprint, snakemake.params.store)
    data = open_data(json.load(open(snakemake.input.data))["store"])
    layout = make_layout(name, cfg["models"][name], prompt, data, cfg["store"]["chunk_images"],
                         cfg["store"]["shuffle_seed"], fingerprint, cache_dir=cfg["weights"]["cache_dir"])
    keys = list(snakemake.params.layers)
    done = store.prepare(snakemake.params.store, layout, keys)
    with open(snakemake.output[0], "w") as f:
        json.dump({"store": snakemake.params.store, "keys": keys, **done}, f, indent=2)
