# Stage 4: one self-contained HTML page (figures embedded; also saved as PNGs in <results>/report_files/).
# Both are marked for `snakemake --report`, with captions from workflow/report/*.rst. The report
# reads exactly its inputs, in the order `layerprobe.report.inputs` pairs them with the config.


report: "../report/workflow.rst"


rule report:
    input:
        metrics=report_inputs("metrics"),
        epochs=report_inputs("epochs"),
        predictions=report_inputs("predictions"),
        per_image=report_inputs("per_image"),
        scans=report_inputs("scans"),
        scan_fingerprints=report_inputs("scan_fingerprints"),
        stores=report_inputs("stores"),
        data=report_inputs("data"),
    params:
        fingerprint=fingerprint("report"),
        benchmarks=results("<results>/benchmarks"),  # every job's measured time and memory
    output:
        html=report(
            "<results>/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
        figures=report(
            directory("<results>/report_files"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "<results>/logs/report.log",
    benchmark:
        "<results>/benchmarks/report/report.tsv"
    conda:
        "../../envs/layerprobe.yaml"
    resources:
        mem_mb=mem_mb("report"),
        runtime=runtime("report"),
    script:
        "../scripts/report.py"
