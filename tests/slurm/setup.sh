#!/usr/bin/env bash
# Install what tests/test_slurm.py needs: a single-node SLURM (Debian's slurm-wlm: slurmctld,
# slurmd, sacct, squeue) with munge, and the Snakemake SLURM executor plugin (the optional
# extra `.[slurm]`). Run as root (CI is root), from the repository root:
#     bash tests/slurm/setup.sh            # uses .venv/bin/python if present, else python3
# Exit status 0 = everything is installed; non-zero = something could not be installed (the test
# then skips with the reason this script printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

need_apt=0
for bin in slurmctld slurmd sacct squeue sbatch munged; do
    command -v "$bin" >/dev/null 2>&1 || [[ -x "/usr/sbin/$bin" ]] || need_apt=1
done
if [[ $need_apt == 1 ]]; then
    if [[ $(id -u) != 0 ]]; then
        echo "tests/slurm/setup.sh: slurm-wlm/munge missing and not root: cannot apt-get install" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge
fi

if ! "$PY" -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q -e '.[slurm]'
fi
"$PY" -c "import snakemake_executor_plugin_slurm" 
echo "tests/slurm/setup.sh: slurm-wlm, munge and snakemake-executor-plugin-slurm are installed"
