rule retrain:
    input:
        arch=lambda w: dag.retrain_inputs(P, w.run, int(w.seed)),
        code=dag.code_inputs("retrain"),
    output:
        model=f"{DS_DIR}/{{run}}/seed{{seed}}/model.pt",
        curves=f"{DS_DIR}/{{run}}/seed{{seed}}/train.json",
    params:
        h=lambda w: params_hash(P, stage_keys("retrain", w.run)),
    log:
        f"{LOGS}/{{run}}/seed{{seed}}/retrain.log",
    benchmark:
        f"{LOGS}/{{run}}/seed{{seed}}/retrain.benchmark.tsv"
    threads: P.pipeline.threads
    priority: dag.STAGE_PRIORITY["retrain"]
    resources:
        gpu=GPUS,
    retries: RETRIES
    conda:
        ENV
    shell:
        "rnas retrain --params \"$RNAS_WORKFLOW_PARAMS\" --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"
