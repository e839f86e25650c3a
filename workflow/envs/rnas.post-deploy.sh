#!/usr/bin/env bash
# Runs once in the new conda environment (Snakemake's post-deploy hook), from the working
# directory, which is the project folder: installs the rnas package without touching the
# pinned dependencies that workflow/envs/rnas.yaml installed.
set -euo pipefail
python -m pip install --no-deps -e .
