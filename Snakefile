# rnas pipeline: teacher -> search -> retrain -> evaluate -> report (docs/design.md §2).
# Every rule calls the same `rnas <stage>` command that dvc.yaml calls.
#   snakemake --cores all                               # params.yaml (digits, embedded)
#   RNAS_PARAMS=configs/cifar10.yaml snakemake --cores all
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/retrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Every evaluation is a target besides the report: the report's outputs (one cell drawing per
# run) change with pipeline.runs, and Snakemake gives a job whose output set changed no
# provenance, so an added run would otherwise leave the old report "up to date".
rule all:
    input:
        REPORT,
        eval_targets(P),
