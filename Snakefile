# rnas pipeline: teacher -> search -> retrain -> evaluate -> report (DESIGN.md §1).
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


rule all:
    input:
        REPORT,
