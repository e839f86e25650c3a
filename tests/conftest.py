"""Shared fixtures: a tiny params file for workflow-level tests."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from rnas.data import Splits, TensorPair, get_info

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def require_or_skip(condition: bool, reason: str) -> None:
    """A test's outside tool (Chromium, SLURM) is missing: skip with ``reason`` locally, but fail
    under ``CI=true`` (``.ci/run`` sets it; ``1`` and ``yes`` count too), where the tool must
    have been installed and a skip would hide that the test never ran."""
    __tracebackhide__ = True  # report the calling test's line, not this one
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI={os.environ['CI']}: {reason}; CI must be able to run this test", pytrace=False)
    pytest.skip(reason)


def chromium_binary() -> str | None:
    """The headless browser the UI tests drive (Debian's ``chromium`` or another name), if any."""
    return next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(b)), None
    )


# The tests that run the whole pipeline (2-4 minutes each on 2 cores), longest first, so that
# pytest-xdist's round-robin start hands them alternately to its two workers.
PIPELINE_TESTS = (
    "test_tiny_pipeline_end_to_end_with_both_runners",
    "test_tiny_pipeline_runs_through_the_slurm_profile",
    "test_editing_a_module_reruns_exactly_what_executes_it_with_dvc",
    "test_editing_a_module_reruns_exactly_what_executes_it_with_snakemake",
    "test_snakemake_killed_mid_search_finishes_from_the_checkpoint",
    "test_dvc_killed_mid_search_finishes_from_the_checkpoint",
)


def pytest_collection_modifyitems(config, items):
    """The whole-pipeline tests first, then the other slow ones, then the rest (a stable sort:
    file order otherwise), dealt alternately into two halves: pytest-xdist's worksteal gives
    each of the two workers one contiguous half, so each starts with half of the long tests and
    an idle worker steals short ones from the other's end, instead of the longest tests, which
    sit in the last files, starting last and running alone on one worker."""

    def rank(item) -> int:
        if item.originalname in PIPELINE_TESTS:
            return PIPELINE_TESTS.index(item.originalname)
        return len(PIPELINE_TESTS) + (item.get_closest_marker("slow") is None)

    ordered = sorted(items, key=rank)
    items[:] = ordered[0::2] + ordered[1::2]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and robust to a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_splits(n_train: int = 32, n_val: int = 16) -> Splits:
    g = torch.Generator().manual_seed(123)
    info = dataclasses.replace(get_info("digits"), image_size=8)

    def pair(n: int) -> TensorPair:
        return TensorPair(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))

    return Splits(train=pair(n_train), val=pair(n_val), test=pair(n_val), info=info)


def scrambled_supernet(k: int, channels_last: bool, cin: int = 1, seed: int = 0):
    """A float64 supernet (C=8, 3 cells) with α and β drawn far from uniform and BN running
    statistics that differ per BN, so a mixed-up op, edge or statistic shows in a comparison of
    two forward paths; channels-last if asked."""
    from rnas.space.supernet import Supernet

    torch.manual_seed(seed)
    net = Supernet(8, 3, 10, input_channels=cin, partial_channels=k).double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def train_tiny(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> torch.nn.Module:
    """Full-batch Adam (lr 1e-2) on cross-entropy for ``steps`` steps; gradients cleared, eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def train_digits_cnn() -> tuple[torch.nn.Module, Splits]:
    """A small CNN (width 8, 2 stages) trained clean for 3 epochs on digits (Adam 1e-2, batch 64,
    seeded): a real model for the certification and attack tests; returned in train mode."""
    import torch.nn.functional as F

    from rnas.data import load_splits
    from rnas.models import build_model

    torch.manual_seed(0)
    splits = load_splits("digits", seed=0, image_size=8)
    model = build_model("small_cnn", 10, 1, "digits", width=8, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(splits.train), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(splits.train.x[idx]), splits.train.y[idx]).backward()
            opt.step()
    return model, splits


def checkpointed_epochs(folder: Path) -> int:
    """Epochs a stage's resumable state holds (the newest readable generation, as a resume reads it)."""
    from rnas.checkpoint import CheckpointError, ResumeState, load_checked

    for name in ("last.pt", "prev.pt"):
        try:
            return load_checked(folder / name, ResumeState.REQUIRED)["epoch"] + 1
        except CheckpointError:
            continue
    raise AssertionError(f"no readable checkpoint in {folder}")


def tiny_params(runs=("darts", "random")) -> dict:
    """params.yaml scaled down to seconds: one seed, one epoch everywhere, 4 channels, 16 test examples."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["pipeline"]["runs"] = list(runs)
    p["pipeline"]["seeds"] = [0]  # tests that need several seeds set them
    p["pipeline"]["progress"] = False
    p["teacher"].update(width=4, depth=2)
    p["teacher"]["train"].update(epochs=1)
    p["search"].update(epochs=1, init_channels=4, layers=2, batch_size=32)
    p["retrain"].update(init_channels=4, layers=2)
    p["retrain"]["train"].update(epochs=1)
    for section in ("teacher", "retrain"):
        p[section]["train"]["perturbation"].update(steps=1)
    p["evaluate"].update(n_examples=16, cw_steps=5, deepfool_steps=5, eps_sweep=[0.0, 0.1, 0.3])
    p["evaluate"].update(certify_eps_sweep=[1.0e-6, 1.0e-3], certify_radius_steps=2, autoattack_iterations=10)
    p["data"]["train_subset"] = 256  # of the ~1150 training-pool digits
    # AutoAttack costs ~20 s per call whatever the number of examples: the workflow tests keep the
    # L∞ one and leave the L2 one to the unit tests (tests/test_attacks.py).
    p["evaluate"]["attacks"] = [a for a in p["evaluate"]["attacks"] if a != "autoattack_l2"]
    return p


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A working directory with a tiny params.yaml (the Snakefile is used from the repo)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return tmp_path


def copy_workflow(dest: Path) -> None:
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    shutil.copytree(ROOT / "workflow", dest / "workflow")


def kill_test_params() -> dict:
    """Tiny params for the kill/resume tests: three epochs, so a kill lands mid-run."""
    p = tiny_params(runs=("darts",))
    p["data"]["train_subset"] = 0  # the whole pool: 20 search steps an epoch for the kill step to land in
    p["teacher"]["train"]["epochs"] = 3
    p["search"]["epochs"] = 3
    return p


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """The folder ``name`` that ``build(folder)`` fills, built once per test session: the
    pytest-xdist workers share it under a lock in the session's temp folder (read-only after)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    folder = (base if worker_id == "master" else base.parent) / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").write_text("")
    return folder


@pytest.fixture(scope="session")
def darts_search_reference(tmp_path_factory, worker_id) -> Path:
    """An uninterrupted darts search on :func:`kill_test_params` (read by the kill tests), run once
    per test session (:func:`built_once`)."""
    import subprocess
    import sys

    def build(ref: Path) -> None:
        p = kill_test_params()
        p["tracking"]["enabled"] = False  # the files only (the kill tests compare them)
        (ref / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        env = dict(os.environ, OMP_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet")
        env.pop("MLFLOW_TRACKING_URI", None)
        out = subprocess.run(
            [sys.executable, "-m", "rnas.cli", "search", "--run", "darts", "--seed", "0"],
            cwd=ref,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, out.stderr[-3000:]

    return built_once(tmp_path_factory, worker_id, "darts_reference", build)
