# The report runs on the submitting host (localrule), after every evaluation; its plots and the
# HTML report are items of `snakemake --report`, with captions from workflow/report/*.rst.
from pathlib import Path

from rnas.report.curves import curve_files

CAPTIONS = Path(str(workflow.current_basedir)).parent / "report"


rule report:
    input:
        results=dag.report_inputs(P),
        code=dag.code_inputs("report"),
    output:
        md=REPORT,
        html=report(str(paths.report_html(P)), caption="../report/report.rst", category="Report"),
        plots=[
            report(str(p), caption=f"../report/{dag.plot_caption(p, CAPTIONS)}", category="Plots")
            for p in paths.report_plots(P)
        ],
        curves=[str(p) for p in curve_files(P)],
    params:
        h=params_hash(P, stage_keys("report")),
    log:
        f"{LOGS}/report.log",
    localrule: True
    conda:
        ENV
    shell:
        "rnas report --params \"$RNAS_WORKFLOW_PARAMS\" > {log} 2>&1"
