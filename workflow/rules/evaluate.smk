rule evaluate:
    input:
        f"{DS_DIR}/{{run}}/seed{{seed}}/model.pt",
    output:
        f"{DS_DIR}/{{run}}/seed{{seed}}/eval.json",
        f"{DS_DIR}/{{run}}/seed{{seed}}/flags.json",
    params:
        h=key_hash("evaluate"),
    log:
        f"{LOGS}/{{run}}/seed{{seed}}/evaluate.log",
    benchmark:
        f"{LOGS}/{{run}}/seed{{seed}}/evaluate.benchmark.tsv"
    threads: P.pipeline.threads
    resources:
        mem_mb=4000,
        gpu=GPUS,
        runtime=120,
    shell:
        "{RNAS} evaluate {PFLAG} --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"


rule evaluate_teacher:
    input:
        TEACHER_MODEL,
    output:
        f"{DS_DIR}/teacher/eval.json",
        f"{DS_DIR}/teacher/flags.json",
    params:
        h=key_hash("evaluate"),
    log:
        f"{LOGS}/teacher.evaluate.log",
    benchmark:
        f"{LOGS}/teacher.evaluate.benchmark.tsv"
    threads: P.pipeline.threads
    resources:
        mem_mb=4000,
        gpu=GPUS,
        runtime=120,
    shell:
        "{RNAS} evaluate {PFLAG} --run teacher > {log} 2>&1"
