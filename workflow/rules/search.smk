# One rule per search space, because the output file differs (genotype.json / architecture.json).
# Ablation runs (RunSpec.arch_from) have no search of their own.


rule search_cell:
    input:
        lambda w: teacher_dep(w.run),
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
        runtime=120,
    shell:
        "{RNAS} search {PFLAG} --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"


rule search_width:
    input:
        lambda w: teacher_dep(w.run),
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
        runtime=120,
    shell:
        "{RNAS} search {PFLAG} --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"
