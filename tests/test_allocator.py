"""The C heap's policy (rnas.runtime.configure_allocator): freed activations are reused by the
next step instead of being faulted in again, the policy is chosen by RNAS_MALLOC, and a wrong
value is refused with its name and the allowed ones."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from conftest import ROOT

from rnas.runtime import MALLOC_ENV, configure_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A loop that frees and allocates the same 4 MiB activations every step (a depthwise conv and a
# batch norm, forward and backward, as a search step's edges), counting the minor page faults
# (pages the kernel had to map, zero-filled) per step after a warm-up of 20 steps: under the fixed
# policy the heap still grows by a 4 MiB block (1,024 faults) once or twice in the first ~15
# steps, then faults nothing. glibc's own policy faults in bursts throughout (some steps ~2,000
# pages, others none), so the figure is the mean over 20 steps.
_LOOP = """
import json, resource, torch
from rnas.runtime import configure_allocator
on = configure_allocator()
torch.set_num_threads(1)
x = torch.randn(64, 16, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_(True)
w = torch.ones(16, 1, 3, 3)
def step():
    y = torch.nn.functional.conv2d(x, w, padding=1, groups=16)
    torch.nn.functional.batch_norm(y, None, None, training=True).sum().backward()
for _ in range(20):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(json.dumps({"on": on, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20}))
"""


# glibc starts with a 128 KiB mmap threshold and raises it when a mapped block is freed, by an
# amount that depends on the order blocks happen to be freed in: unpinned, the same loop faulted
# 550-1,160 pages a step in four processes and, once in CI (session 30), none. Both processes start
# with the threshold pinned at glibc's initial value (its environment tunable), so the baseline is
# glibc mapping every large block afresh, deterministically; the fixed policy's mallopt overrides it.
_GLIBC_START = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _faults_per_step(policy: str, repeats: int = 2) -> dict:
    """The loop's faults per step under ``policy``: the least of ``repeats`` fresh processes.
    Faults the kernel adds from outside (other processes competing for memory, as parallel tests
    do) only add, so the least disturbed run is the measurement, for either policy alike."""
    env = dict(os.environ, **{MALLOC_ENV: policy, "OMP_NUM_THREADS": "1"}, **_GLIBC_START)
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", _LOOP], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["faults"])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_activations_are_reused_instead_of_faulted_in_again():
    glibc, reuse = _faults_per_step("glibc"), _faults_per_step("reuse")
    assert not glibc["on"] and reuse["on"]
    # glibc's policy (threshold at its start value) maps each 4 MiB block afresh (~4,100 pages a
    # step); the fixed one serves the step from the blocks the previous step freed (0-51)
    assert glibc["faults"] > 100
    assert reuse["faults"] < glibc["faults"] / 10


def test_a_wrong_policy_is_refused_with_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(MALLOC_ENV, "jemalloc")
    with pytest.raises(ValueError, match=r"RNAS_MALLOC='jemalloc': expected one of reuse, glibc"):
        configure_allocator()


def test_glibc_policy_leaves_the_heap_alone():
    assert configure_allocator("glibc") is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_every_stage_sets_the_policy(monkeypatch):
    """setup_runtime (every stage's first call) applies it; RNAS_MALLOC=glibc opts out."""
    import rnas.runtime as runtime

    seen = []
    monkeypatch.setattr(runtime, "configure_allocator", lambda: seen.append(True) or True)
    runtime.setup_runtime(1, True, "cpu")
    assert seen == [True]
