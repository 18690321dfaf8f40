"""Rule report: <results>/report.html (and <results>/report_files/*.png) from exactly the rule's inputs."""
from pathlib import Path

from layerprobe.job import job
from layerprobe.report.inputs import ReportInputs
from layerprobe.report.page import build_report

with job(snakemake, "report") as run:
    inputs = ReportInputs.from_snakemake(run.config, snakemake.input, snakemake.params.benchmarks)
    build_report(run.config, inputs, Path(snakemake.output.html), Path(snakemake.output.figures))
