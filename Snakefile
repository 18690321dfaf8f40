# layerprobe: images -> per-layer Zarr features -> linear probes -> <results>/report.html
# Without --configfile this runs the embedded demo (synthetic ADE20K, tiny local models, under
# results/demo/). `<results>` is the config's results root (pathvars).
from snakemake.utils import min_version

min_version("9.27")

if not config:
    configfile: "config/demo.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/scan.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "<results>/report.html",
    default_target: True
