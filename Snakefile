# rnas pipeline: teacher -> search -> retrain -> evaluate (-> alternative) -> report (docs/design.md §2).
# Every rule calls the same `rnas <stage>` command as dvc.yaml. The params are Snakemake's config,
# validated before any job starts:
#   snakemake --cores all                                        # params.yaml (digits, embedded)
#   snakemake --cores all --configfile configs/digits_full.yaml  # merged over params.yaml
#   snakemake --cores all --configfile configs/cifar10.yaml --replace-workflow-config  # instead of it
#   snakemake --cores all --config 'pipeline={seeds: [0, 1]}'    # one value changed
#   RNAS_PARAMS=configs/cifar10.yaml snakemake --cores all       # instead of params.yaml
#   snakemake --cores all --sdm conda                            # each rule in workflow/envs/rnas.yaml
#   snakemake --report report.zip                                # plots and report with captions
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/retrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/alternative.smk"
include: "workflow/rules/report.smk"


# Every evaluation is a target besides the report: the report's outputs (one cell drawing per
# run) change with pipeline.runs, and Snakemake gives a job whose output set changed no
# provenance, so an added run would otherwise leave the old report "up to date".
rule all:
    input:
        REPORT,
        dag.eval_targets(P),
    default_target: True
