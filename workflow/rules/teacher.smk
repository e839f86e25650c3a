rule teacher:
    input:
        code=dag.code_inputs("teacher"),
    output:
        model=TEACHER_MODEL,
        curves=f"{DS_DIR}/teacher/train.json",
    params:
        h=params_hash(P, stage_keys("teacher")),
    log:
        f"{LOGS}/teacher.log",
    benchmark:
        f"{LOGS}/teacher.benchmark.tsv"
    threads: P.pipeline.threads
    priority: dag.STAGE_PRIORITY["teacher"]
    resources:
        gpu=GPUS,
    retries: RETRIES
    conda:
        ENV
    shell:
        "rnas teacher --params \"$RNAS_WORKFLOW_PARAMS\" > {log} 2>&1"
