# Config validation (at DAG build), the input functions and the fingerprint params every rule uses.
# Fingerprints (layerprobe/fingerprint.py) are the config slices that shape each output: passed as
# params, an edit reruns exactly the jobs whose outputs it changes. No rule logic here.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.exceptions import WorkflowError

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe import resources as lp_resources
from layerprobe.features import store as lp_store
from layerprobe.models import weights as lp_weights
from layerprobe.data.ade20k import DatasetError, check_layout
from layerprobe.models.specs import requested_keys


def _is_dry_run():
    flags = [a for a in sys.argv[1:] if a.startswith("-")]
    short = [a for a in flags if not a.startswith("--")]
    return getattr(workflow, "dryrun", False) or any(
        a in ("--dry-run", "--dryrun") for a in flags
    ) or any("n" in a[1:] for a in short)


try:
    CFG = lp_config.validate(config)
except lp_config.ConfigError as err:
    raise WorkflowError(f"Invalid config: {err}")

DATASET = CFG["dataset"]
SYNTHETIC = DATASET["synthetic"] is not None
DOWNLOAD = not SYNTHETIC and DATASET["download"]
# Dataset-structure errors surface before any job is queued; a dry run needs no data, and a
# dataset to download is checked by fetch_ade20k once unpacked.
if not SYNTHETIC and workflow.is_main_process and not _is_dry_run() and not (DOWNLOAD and not Path(DATASET["root"]).exists()):
    try:
        check_layout(DATASET["root"])
    except DatasetError as err:
        raise WorkflowError(f"Dataset error (config key dataset.root): {err}")

if workflow.is_main_process and _is_dry_run():  # a one-look cost summary before anything runs
    from layerprobe.plan import summary as plan_summary
    print(plan_summary(CFG), file=sys.stderr)

MODELS = CFG["models"]
SPECS = {name: lp_config.spec(CFG, name) for name in MODELS}
PARTS = CFG["store"]["parts"]


wildcard_constraints:
    model="|".join(MODELS),
    prompt=lp_config.STORE_ID_PATTERN,  # a prompt id, `+{fill}` for a category-fill control
    probe="((layer|vision)_[0-9]{2,3}|projector)([+]cls)?(-seed[0-9]+)?",
    res="[0-9]+",
    part="[0-9]+",
    source="[A-Za-z0-9][A-Za-z0-9._-]*",


def stores():
    """(model, store id) pairs: one feature store each (a prompt's category fills are stores of their own)."""
    return [(m, p) for m, cfg in MODELS.items() for p in lp_config.prompt_ids(cfg)]


def data_manifest(wildcards):
    """The model's data store: its resolution and geometry (`64px`, or `64px_pad`)."""
    return f"results/data/{lp_config.model_data_name(CFG, wildcards.model)}.json"


def probe_data_manifest(wildcards):
    """Pad geometry: the probe also reads the original annotations (whole-image scoring)."""
    return [data_manifest(wildcards)] if lp_config.geometry(CFG, wildcards.model) == "pad" else []


def dataset_marker(wildcards=None):
    """The rule that makes the dataset, if one does: synthetic (demo) or downloaded."""
    if SYNTHETIC:
        return ["results/dataset/synthetic.json"]
    return ["results/dataset/ade20k.json"] if DOWNLOAD else []


def tiny_built(model):
    return f"results/models/{model}.built"


def model_inputs(wildcards):
    """A tiny model is built by a job; hub and open_clip weights are fetched by a localrule
    (unless weights.offline is false: then jobs download them themselves). Ancient: the weights'
    identity is in the fingerprints, so a manifest rewritten with the same commit reruns nothing."""
    model = MODELS[wildcards.model]
    if model.get("tiny"):
        return ancient(tiny_built(wildcards.model))
    if lp_weights.needs_fetch(model) and CFG["weights"]["offline"]:
        return ancient(str(lp_weights.manifest_path(model)))
    return []


def source_weights(wildcards):
    """The identity (a commit) a fetch_weights job is planned with."""
    name, _ = lp_weights.model_for_source(CFG, wildcards.source)
    return lp_fp.weights(CFG, name)


for _name, _model in MODELS.items():  # a tiny model changed by hand is refused before anything runs
    if _model.get("tiny"):
        try:
            lp_weights.check_tiny_intact(_name, _model, tiny_built(_name))
        except lp_weights.WeightsChanged as err:
            raise WorkflowError(str(err))


def store_path(wildcards):
    return f"results/features/{wildcards.model}/{wildcards.prompt}.zarr"


def store_layout(wildcards):
    return f"results/features/{wildcards.model}/{wildcards.prompt}.layout.json"


def store_parts(wildcards):
    return [f"results/features/{wildcards.model}/{wildcards.prompt}.part{p}.json" for p in range(PARTS)]


def store_manifest(wildcards):
    return f"results/features/{wildcards.model}/{wildcards.prompt}.manifest.json"


def probe_fingerprint_file(wildcards):
    return f"results/fingerprints/probes/{wildcards.model}/{wildcards.prompt}/{wildcards.probe}.txt"


def probe_dir(model, prompt, probe):
    return f"results/probes/{model}/{prompt}/{probe}"


def all_probe_outputs():
    return [
        f"{probe_dir(m, p, k)}/{f}"
        for m, p in stores()
        for k in lp_config.probe_ids(MODELS[m], CFG["probe"]["seeds"])
        for f in ("metrics.json", "epochs.csv", "predictions.npz", "per_image.npz")
    ]


def all_scan_outputs():
    return [f"results/scan/{m}/{p}.{ext}" for m, p in lp_config.scan_targets(CFG) for ext in ("csv", "json")]


def all_store_manifests():
    return [f"results/features/{m}/{p}.manifest.json" for m, p in stores()]


def all_data_manifests():
    return [f"results/data/{lp_config.data_name(r, g)}.json" for r, g in lp_config.data_stores(CFG)]


# Fingerprint params (hashes): Snakemake reruns a job when its params change.
def data_fingerprint(wildcards):
    return lp_fp.data(CFG, int(wildcards.res)).hash


def pad_data_fingerprint(wildcards):
    return lp_fp.data(CFG, int(wildcards.res), "pad").hash


def tiny_model_fingerprint(wildcards):
    return lp_fp.tiny_model(CFG, wildcards.model).hash


def store_fingerprint(wildcards):
    return lp_fp.store(CFG, wildcards.model, wildcards.prompt).hash


def store_keys(wildcards):
    """Layers the store holds after its jobs: requested ones plus those already complete in it.
    Adding a layer changes this (one extension runs); removing one does not."""
    fingerprint = lp_fp.store(CFG, wildcards.model, wildcards.prompt)
    return lp_store.keys_after_run(store_path(wildcards), fingerprint, requested_keys(MODELS[wildcards.model]))


def probe_fingerprint(wildcards):
    return lp_fp.probe(CFG, wildcards.model, wildcards.prompt, wildcards.probe).hash


def scan_fingerprint(wildcards):
    return lp_fp.scan(CFG, wildcards.model, wildcards.prompt).hash


def report_fingerprint(wildcards):
    return lp_fp.report(CFG).hash


def mem_mb(rule_name):
    return lambda wildcards, attempt: lp_resources.mem_mb(rule_name, CFG, wildcards, attempt)


def runtime(rule_name):
    return lambda wildcards, attempt: lp_resources.runtime_min(rule_name, CFG, wildcards, attempt)


def gpus(rule_name):
    return lambda wildcards: lp_resources.gpus(rule_name, CFG)
