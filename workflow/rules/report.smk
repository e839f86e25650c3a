from rnas.pipeline import eval_targets


rule report:
    input:
        eval_targets(P),
    output:
        REPORT,
    params:
        h=key_hash("report"),
    log:
        f"{LOGS}/report.log",
    shell:
        "{RNAS} report {PFLAG} > {log} 2>&1"
