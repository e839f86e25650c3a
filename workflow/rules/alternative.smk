# pipeline.alternative_cells: for each undecided gradient cell-space search, the cell it chose
# before its final one, retrained and evaluated alike (rnas/stages/alternative.py). Every run and
# seed of those runs gets the folder (a decided search's holds only summary.json).
rule alternative:
    input:
        search=lambda w: dag.alternative_inputs(P, w.run, int(w.seed)),
        code=dag.code_inputs("alternative"),
    output:
        folder=directory(f"{DS_DIR}/{{run}}/seed{{seed}}/alternative"),
    params:
        h=lambda w: params_hash(P, stage_keys("alternative", w.run)),
    log:
        f"{LOGS}/{{run}}/seed{{seed}}/alternative.log",
    benchmark:
        f"{LOGS}/{{run}}/seed{{seed}}/alternative.benchmark.tsv"
    threads: P.pipeline.threads
    priority: dag.STAGE_PRIORITY["alternative"]
    resources:
        gpu=GPUS,
    retries: RETRIES
    conda:
        ENV
    shell:
        "rnas alternative --params \"$RNAS_WORKFLOW_PARAMS\" --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"
