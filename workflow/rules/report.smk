# Stage 4: one self-contained HTML page (figures embedded; also saved as PNGs in results/report_files/).
# Both are marked for `snakemake --report`, with captions from workflow/report/*.rst.


report: "../report/workflow.rst"


rule report:
    input:
        probes=all_probe_outputs(),
        scans=all_scan_outputs(),
        stores=all_store_manifests(),
        data=all_data_manifests(),
    params:
        fingerprint=report_fingerprint,
    output:
        html=report(
            "results/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
        figures=report(
            directory("results/report_files"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    resources:
        mem_mb=mem_mb("report"),
        runtime=runtime("report"),
    script:
        "../scripts/report.py"
