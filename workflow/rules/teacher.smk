rule teacher:
    output:
        model=TEACHER_MODEL,
        curves=f"{DS_DIR}/teacher/train.json",
    params:
        h=key_hash("teacher"),
    log:
        f"{LOGS}/teacher.log",
    benchmark:
        f"{LOGS}/teacher.benchmark.tsv"
    threads: P.pipeline.threads
    resources:
        mem_mb=4000,
        gpu=GPUS,
        runtime=60,
    shell:
        "{RNAS} teacher {PFLAG} > {log} 2>&1"
