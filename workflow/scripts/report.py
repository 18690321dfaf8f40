"""Rule report: results/report.html (and results/report_files/*.png) from every result."""
from pathlib import Path

from layerprobe import config as lp_config
from layerprobe.logs import redirect_output
from layerprobe.report import build_report

with redirect_output(snakemake.log[0]):
    cfg = lp_config.validate(snakemake.config)
    html = Path(snakemake.output.html)
    build_report(cfg, html.parent, html)
