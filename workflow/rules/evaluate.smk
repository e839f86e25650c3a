rule evaluate:
    input:
        model=f"{DS_DIR}/{{run}}/seed{{seed}}/model.pt",
        code=dag.code_inputs("evaluate"),
    output:
        metrics=f"{DS_DIR}/{{run}}/seed{{seed}}/eval.json",
        flags=f"{DS_DIR}/{{run}}/seed{{seed}}/flags.json",
    params:
        h=params_hash(P, stage_keys("evaluate")),
        run=lambda w: w.run,
        seed=lambda w: w.seed,
    log:
        f"{LOGS}/{{run}}/seed{{seed}}/evaluate.log",
    benchmark:
        f"{LOGS}/{{run}}/seed{{seed}}/evaluate.benchmark.tsv"
    threads: P.pipeline.threads
    priority: dag.STAGE_PRIORITY["evaluate"]
    resources:
        gpu=GPUS,
    retries: RETRIES
    conda:
        ENV
    shell:
        "rnas evaluate --params \"$RNAS_WORKFLOW_PARAMS\" --run {params.run} --seed {params.seed} > {log} 2>&1"


use rule evaluate as evaluate_teacher with:
    input:
        model=TEACHER_MODEL,
        code=dag.code_inputs("evaluate"),
    output:
        metrics=f"{DS_DIR}/teacher/eval.json",
        flags=f"{DS_DIR}/teacher/flags.json",
    params:
        h=params_hash(P, stage_keys("evaluate")),
        run="teacher",
        seed=0,
    log:
        f"{LOGS}/teacher.evaluate.log",
    benchmark:
        f"{LOGS}/teacher.evaluate.benchmark.tsv"
