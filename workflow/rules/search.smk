# One rule per kind of search (rnas.dag.SEARCH_FILES: the files it writes): search_cell (DARTS-type),
# search_cell_random, search_cell_lrnas, search_cell_tutors (RNAS-CL) and search_width (RNAS-CL).
# Ablation runs (RunSpec.arch_from) have no search of their own.
for kind, files in dag.SEARCH_FILES.items():

    rule:
        name:
            f"search_{kind}"
        input:
            read=lambda w: dag.search_inputs(P, w.run, w.seed),
            code=lambda w: dag.code_inputs("search", w.run),
        output:
            [
                report(f"{DS_DIR}/{{run}}/seed{{seed}}/{f}", caption=f"../report/{f.removesuffix('.png')}.rst",
                       category="Search", subcategory="{run} seed {seed}")
                if f.endswith(".png") else f"{DS_DIR}/{{run}}/seed{{seed}}/{f}"
                for f in files
            ],
        wildcard_constraints:
            run=dag.wildcard_regex([r for r in SEARCHED if dag.search_kind(r) == kind]),
        params:
            h=lambda w: params_hash(P, stage_keys("search", w.run)),
        log:
            f"{LOGS}/{{run}}/seed{{seed}}/search.log",
        benchmark:
            f"{LOGS}/{{run}}/seed{{seed}}/search.benchmark.tsv"
        threads: P.pipeline.threads
        priority: dag.STAGE_PRIORITY["search"]
        resources:
            gpu=GPUS,
        retries: RETRIES
        conda:
            ENV
        shell:
            "rnas search --params \"$RNAS_WORKFLOW_PARAMS\" --run {wildcards.run} --seed {wildcards.seed} > {log} 2>&1"
