# One rule per kind of output set (genotype.json / + tutors.json / architecture.json).
# Ablation runs (RunSpec.arch_from) have no search of their own.


rule search_cell:
    input:
        lambda w: search_inputs(P, w.run),
    output:
        arch=f"{DS_DIR}/{{run}}/seed{{seed}}/genotype.json",
        curves=f"{DS_DIR}/{{run}}/seed{{seed}}/search.json",
    wildcard_constraints:
        run=run_regex(CELL_RUNS),
    params:
        h=lambda w: key_hash("search", w.run),
    log:
        f"{LOGS}/{{run}}/seed{{seed}}/search.log",
    benchmark:
        f"{LOGS}/{{run}}/seed{{seed}}/search.benchmark.tsv"
    threads: P.pipeline.threads
    resources:
        mem_mb=4000,
        gpu=GPUS,
        runtime=120,
    shell:
        "{RNAS} search {PFLAG} --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"


rule search_cell_tutors:
    input:
        lambda w: search_inputs(P, w.run),
    output:
        arch=f"{DS_DIR}/{{run}}/seed{{seed}}/genotype.json",
        curves=f"{DS_DIR}/{{run}}/seed{{seed}}/search.json",
        tutors=f"{DS_DIR}/{{run}}/seed{{seed}}/tutors.json",
    wildcard_constraints:
        run=run_regex(TUTOR_RUNS),
    params:
        h=lambda w: key_hash("search", w.run),
    log:
        f"{LOGS}/{{run}}/seed{{seed}}/search.log",
    benchmark:
        f"{LOGS}/{{run}}/seed{{seed}}/search.benchmark.tsv"
    threads: P.pipeline.threads
    resources:
        mem_mb=4000,
        gpu=GPUS,
        runtime=120,
    shell:
        "{RNAS} search {PFLAG} --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"


rule search_width:
    input:
        lambda w: search_inputs(P, w.run),
    output:
        arch=f"{DS_DIR}/{{run}}/seed{{seed}}/architecture.json",
        curves=f"{DS_DIR}/{{run}}/seed{{seed}}/search.json",
    wildcard_constraints:
        run=run_regex(WIDTH_RUNS),
    params:
        h=lambda w: key_hash("search", w.run),
    log:
        f"{LOGS}/{{run}}/seed{{seed}}/search.log",
    benchmark:
        f"{LOGS}/{{run}}/seed{{seed}}/search.benchmark.tsv"
    threads: P.pipeline.threads
    resources:
        mem_mb=4000,
        gpu=GPUS,
        runtime=120,
    shell:
        "{RNAS} search {PFLAG} --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"
