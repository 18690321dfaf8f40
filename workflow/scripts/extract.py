"""Rule extract: one part of a (model, prompt) feature store; writes only the missing (chunk, layer) pairs."""
import json
import time

from layerprobe import devices
from layerprobe.features.extract import extract_part, layout_for
from layerprobe.job import job
from layerprobe.models import weights
from layerprobe.models.backbones import compute_precision, load_backbone

with job(snakemake, "store") as run:
    name, model = run.model_name, run.model
    data = run.data_store()
    layout = layout_for(run.config, name, snakemake.wildcards.prompt, data, run.fingerprint)
    keys = json.load(open(snakemake.input.layout))["keys"]  # what prepare_store made room for
    start = time.time()
    options = weights.loader_options(name, model, run.config, run.weights_manifest())  # offline: the cache, checked
    device = devices.use(run.config, "extract")  # extract.device, checked here; torch pinned to extract.threads
    stats = extract_part(lambda: load_backbone(name, model, device, **options), data,
                         snakemake.params.store, layout, keys, int(snakemake.wildcards.part), snakemake.params.parts,
                         model["batch_size"], precision=compute_precision(model, device))
    stats["seconds"] = time.time() - start
    with open(snakemake.output[0], "w") as f:
        json.dump(stats, f, indent=2)
