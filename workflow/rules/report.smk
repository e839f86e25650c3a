from rnas.pipeline import eval_targets, report_inputs
from rnas.report.curves import curve_files


localrules:
    report,


rule report:
    input:
        report_inputs(P),
    output:
        md=REPORT,
        html=str(paths.report_html(P)),
        plots=[report(str(p), category="Plots") for p in paths.report_plots(P)],
        curves=[str(p) for p in curve_files(P)],
    params:
        h=key_hash("report"),
    log:
        f"{LOGS}/report.log",
    shell:
        "{RNAS} report {PFLAG} > {log} 2>&1"
