rule retrain:
    input:
        lambda w: retrain_inputs(P, w.run, int(w.seed)),
    output:
        model=f"{DS_DIR}/{{run}}/seed{{seed}}/model.pt",
        curves=f"{DS_DIR}/{{run}}/seed{{seed}}/train.json",
    params:
        h=lambda w: key_hash("retrain", w.run),
    log:
        f"{LOGS}/{{run}}/seed{{seed}}/retrain.log",
    benchmark:
        f"{LOGS}/{{run}}/seed{{seed}}/retrain.benchmark.tsv"
    threads: P.pipeline.threads
    resources:
        mem_mb=4000,
        gpu=GPUS,
        runtime=240,
    shell:
        "{RNAS} retrain {PFLAG} --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"
