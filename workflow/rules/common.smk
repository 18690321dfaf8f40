# Config validation (at DAG build) and the input functions every rule uses. No rule logic here.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.exceptions import WorkflowError

from layerprobe import config as lp_config
from layerprobe import resources as lp_resources
from layerprobe.ade20k import DatasetError, check_layout
from layerprobe.specs import model_spec, requested_keys


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
# Dataset-structure errors surface before any job is queued; a dry run needs no data.
if not SYNTHETIC and workflow.is_main_process and not _is_dry_run():
    try:
        check_layout(DATASET["root"])
    except DatasetError as err:
        raise WorkflowError(f"Dataset error (config key dataset.root): {err}")

if workflow.is_main_process and _is_dry_run():  # a one-look cost summary before anything runs
    from layerprobe.plan import summary as plan_summary
    print(plan_summary(CFG), file=sys.stderr)

MODELS = CFG["models"]
SPECS = {name: model_spec(name, m) for name, m in MODELS.items()}
PARTS = CFG["store"]["parts"]


wildcard_constraints:
    model="|".join(MODELS),
    prompt="[A-Za-z0-9][A-Za-z0-9_-]*",
    layer="(layer|vision)_[0-9]{2,3}|projector",
    res="[0-9]+",
    part="[0-9]+",


def stores():
    """(model, prompt) pairs: one feature store each."""
    return [(m, p) for m, cfg in MODELS.items() for p in lp_config.prompt_ids(cfg)]


def data_manifest(wildcards):
    return f"results/data/{SPECS[wildcards.model].image_size}px.json"


def dataset_marker(wildcards=None):
    return ["results/dataset/synthetic.json"] if SYNTHETIC else []


def model_inputs(wildcards):
    """A locally built tiny model is a job output; hub ids and 'openai' are fetched at run time."""
    return [f"results/models/{wildcards.model}.built"] if MODELS[wildcards.model].get("tiny") else []


def store_parts(wildcards):
    return [f"results/features/{wildcards.model}/{wildcards.prompt}.part{p}.json" for p in range(PARTS)]


def store_manifest(wildcards):
    return f"results/features/{wildcards.model}/{wildcards.prompt}.manifest.json"


def probe_dir(model, prompt, layer):
    return f"results/probes/{model}/{prompt}/{layer}"


def all_probe_outputs():
    return [
        f"{probe_dir(m, p, k)}/{f}"
        for m, p in stores()
        for k in requested_keys(MODELS[m])
        for f in ("metrics.json", "epochs.csv", "predictions.npz")
    ]


def scanned_models():
    chosen = CFG["scan"]["models"]
    return list(MODELS) if chosen == "all" else [m for m in chosen if m in MODELS]


def all_scan_outputs():
    if not CFG["scan"]["enabled"]:
        return []
    return [f"results/scan/{m}/{p}.csv" for m in scanned_models() for p in lp_config.prompt_ids(MODELS[m])]


def all_store_manifests():
    return [f"results/features/{m}/{p}.manifest.json" for m, p in stores()]


def all_data_manifests():
    return [f"results/data/{r}px.json" for r in sorted({s.image_size for s in SPECS.values()})]


def mem_mb(rule_name):
    return lambda wildcards, attempt: lp_resources.mem_mb(rule_name, CFG, wildcards, attempt)


def runtime(rule_name):
    return lambda wildcards, attempt: lp_resources.runtime_min(rule_name, CFG, wildcards, attempt)


def gpus(rule_name):
    return lambda wildcards: lp_resources.gpus(rule_name, CFG)
