# The adapter between Snakemake and the layerprobe package: the validated config, the checks
# before anything runs (layerprobe.preflight), input functions and the fingerprint params of
# every rule. Paths are spelled here and in the rules only; `<results>` is the config's results
# root (Snakemake's pathvars; `pathvars: {results: ...}` in a config), expanded by Snakemake in
# input, output, log and benchmark paths, and by `results()` for the params that name a path.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.exceptions import WorkflowError

from layerprobe import config as lp_config
from layerprobe import fingerprint as lp_fp
from layerprobe import preflight as lp_preflight
from layerprobe import resources as lp_resources
from layerprobe.features import store as lp_store
from layerprobe.models import weights as lp_weights
from layerprobe.models.layers import PROBE_ID_PATTERN
from layerprobe.models.specs import requested_keys
from layerprobe.report import inputs as lp_inputs


try:
    CFG = lp_config.validate(config)
except lp_config.ConfigError as err:
    raise WorkflowError(f"Invalid config: {err}")

MODELS = CFG["models"]
DATASET = CFG["dataset"]
PARTS = CFG["store"]["parts"]


def results(path):
    """A path under the results root, for params (Snakemake expands `<results>` in files only)."""
    return workflow.pathvars.apply(path)


def tiny_built(model):
    return results(f"<results>/models/{model}.built")


if workflow.is_main_process:
    try:
        summary = lp_preflight.preflight(CFG, lp_preflight.is_dry_run(sys.argv, workflow),
                                         {name: tiny_built(name) for name in MODELS})
    except lp_preflight.PreflightError as err:
        raise WorkflowError(str(err))
    if summary:  # a dry run: the plan's one-look cost summary before anything runs
        print(summary, file=sys.stderr)


wildcard_constraints:
    model="|".join(MODELS),
    prompt=lp_config.STORE_ID_PATTERN,  # a prompt id, `+{fill}` for a category-fill control
    probe=PROBE_ID_PATTERN,
    res="[0-9]+",
    part="[0-9]+",
    source="[A-Za-z0-9][A-Za-z0-9._-]*",


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def dataset_marker(wildcards=None):
    """What makes the dataset, when a job does (synthetic for the demo, or a download)."""
    if DATASET["synthetic"] is not None:
        return ["<results>/dataset/synthetic.json"]
    return ["<results>/dataset/ade20k.json"] if DATASET["download"] else []


def data_manifest(wildcards):
    """The model's data store: its resolution and geometry (`64px`, or `64px_pad`)."""
    return f"<results>/data/{lp_config.model_data_name(CFG, wildcards.model)}.json"


def probe_data_manifest(wildcards):
    """Pad geometry: the probe also reads the original annotations (whole-image scoring)."""
    return [data_manifest(wildcards)] if lp_config.geometry(CFG, wildcards.model) == "pad" else []


def weights_manifest(model):
    return f"<results>/weights/{lp_weights.source_id(MODELS[model])}.json"


def model_inputs(wildcards):
    """A tiny model is built by a job; hub and open_clip weights are fetched by a localrule
    (unless weights.offline is false: then jobs download them themselves). Ancient: the weights'
    identity is in the fingerprints, so a manifest rewritten with the same commit reruns nothing."""
    model = MODELS[wildcards.model]
    if model.get("tiny"):
        return ancient(tiny_built(wildcards.model))
    if lp_weights.needs_fetch(model) and CFG["weights"]["offline"]:
        return ancient(weights_manifest(wildcards.model))
    return []


def store_path(wildcards):
    return results(f"<results>/features/{wildcards.model}/{wildcards.prompt}.zarr")


def store_parts(wildcards):
    return [f"<results>/features/{wildcards.model}/{wildcards.prompt}.part{p}.json" for p in range(PARTS)]


def report_inputs(kind):
    """The report's inputs of one kind, in the order `layerprobe.report.inputs` pairs them with
    the config's results (its keys)."""
    probe_files = {"metrics": "metrics.json", "epochs": "epochs.csv", "predictions": "predictions.npz",
                   "per_image": "per_image.npz"}
    if kind in probe_files:
        return [f"<results>/probes/{m}/{p}/{k}/{probe_files[kind]}" for m, p, k in lp_inputs.probe_keys(CFG)]
    if kind in ("scans", "scan_fingerprints"):
        ext = "csv" if kind == "scans" else "json"
        return [f"<results>/scan/{m}/{p}.{ext}" for m, p in lp_inputs.scan_keys(CFG)]
    if kind == "stores":
        return [f"<results>/features/{m}/{p}.manifest.json" for m, p in lp_inputs.store_keys(CFG)]
    return [f"<results>/data/{name}.json" for name in lp_inputs.data_keys(CFG)]


# --------------------------------------------------------------------------------------------
# Params: fingerprint hashes (Snakemake reruns a job when its params change) and store layers
# --------------------------------------------------------------------------------------------


def fingerprint(stage):
    return lambda wildcards: lp_fp.for_job(stage, CFG, wildcards).hash


def store_keys(wildcards):
    """Layers the store holds after its jobs: requested ones plus those already complete in it.
    Adding a layer changes this (one extension runs); removing one does not."""
    made = lp_fp.store(CFG, wildcards.model, wildcards.prompt)
    return lp_store.keys_after_run(store_path(wildcards), made, requested_keys(MODELS[wildcards.model]))


def source_weights(wildcards):
    """The identity (a commit) a fetch_weights job is planned with."""
    name, _ = lp_weights.model_for_source(CFG, wildcards.source)
    return lp_fp.weights(CFG, name)


# --------------------------------------------------------------------------------------------
# Resources (layerprobe.resources is their one source)
# --------------------------------------------------------------------------------------------


def mem_mb(rule_name):
    return lambda wildcards, attempt: lp_resources.mem_mb(rule_name, CFG, getattr(wildcards, "model", None), attempt)


def runtime(rule_name):
    return lambda wildcards, attempt: lp_resources.runtime_min(rule_name, CFG, attempt)


def gpus(rule_name):
    return lambda wildcards: lp_resources.gpus(rule_name, CFG)


def threads(rule_name):
    """The CPUs a job asks for: its stage's `threads` (layerprobe.devices). Its script pins torch
    to this same number from the config, also where Snakemake grants fewer (local --cores)."""
    return lp_resources.threads(rule_name, CFG)
