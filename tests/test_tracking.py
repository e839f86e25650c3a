"""MLflow as its users use it, and readable logs: MLflow's own source and git tags, the splits as
run inputs, every trained model an MLflow model that loads in a fresh process and predicts as
``model.pt``, evaluation runs naming the search and retrain runs behind their model (and linking
their metrics to it), and stage logs with one INFO line per epoch and no progress-bar debris."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, built_once, tiny_params, tiny_splits

from rnas.checkpoint import save_model
from rnas.config import params_from_dict
from rnas.models import build_model
from rnas.runtime import log_epoch, show_progress
from rnas.tracking import (
    experiment_name,
    file_digest,
    init_store,
    stage_run,
    tracking_uri,
)
from rnas.training.trainer import Trainer

EPOCHS = 2


def _git(*args: str) -> str | None:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def _client(params):
    import mlflow

    return mlflow.MlflowClient(tracking_uri(params.tracking))


def _stage_runs(params) -> dict[str, object]:
    """The FINISHED runs of the store by stage (one each here)."""
    client = _client(params)
    exp = client.get_experiment_by_name(experiment_name(params))
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    by_stage = {}
    for r in runs:
        stage = r.data.tags["stage"]
        assert stage not in by_stage, f"two {stage} runs"
        by_stage[stage] = r
    return by_stage


# -- fast: helpers and in-process runs ------------------------------------------------------


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bars_only_on_a_terminal():
    assert show_progress(True, _Stream(tty=True))
    assert not show_progress(True, _Stream(tty=False))  # a log file under Snakemake or dvc
    assert not show_progress(False, _Stream(tty=True))  # pipeline.progress: false


def test_trainer_logs_one_line_per_epoch(caplog):
    torch.manual_seed(0)
    p = tiny_params()
    p["teacher"]["train"]["epochs"] = EPOCHS
    cfg = params_from_dict(p).teacher.train
    model = build_model("small_cnn", 10, 1, "digits", width=4, depth=2)
    with caplog.at_level(logging.INFO, logger="rnas"):
        Trainer(model, cfg, torch.device("cpu"), seed=0, progress=False, desc="teacher").fit(
            tiny_splits().train, tiny_splits().val
        )
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == [f"teacher epoch {e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]
    for line in lines:  # loss, accuracy, robust accuracy and seconds, under their MLflow names
        assert re.search(
            r"train_loss [\d.]+, train_acc [\d.]+, val_clean_acc [\d.]+, val_robust_acc [\d.]+, "
            r"lr [\d.e-]+, [\d.]+ s$",
            line,
        ), line


def test_epoch_line_format(caplog):
    with caplog.at_level(logging.INFO, logger="rnas"):
        log_epoch(
            "search darts", 2, 8, {"weight_loss": 1.23456, "macs": 324736.4, "seconds": 99.0, "decided": True}, 3.04
        )
    assert caplog.records[-1].getMessage() == "search darts epoch 3/8: weight_loss 1.235, macs 324736, 3.0 s"


@pytest.fixture
def tracked(tmp_path):
    """Tiny params with their own store under ``tmp_path``; no parent pipeline run."""
    p = tiny_params()
    p["tracking"]["store"] = str(tmp_path / "mlflow.db")
    p["pipeline"]["results"] = str(tmp_path / "results")
    parent = os.environ.pop("RNAS_PARENT_RUN_ID", None)
    yield params_from_dict(p)
    if parent is not None:
        os.environ["RNAS_PARENT_RUN_ID"] = parent


def test_experiment_is_a_model_training_experiment(tracked):
    client = _client(tracked)
    init_store(tracked)
    exp = client.get_experiment_by_name(experiment_name(tracked))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    client.delete_experiment_tag(exp.experiment_id, "mlflow.experimentKind")  # an older store
    init_store(tracked)
    assert client.get_experiment(exp.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_source_and_git_tags_and_run_id_linkage(tracked, tmp_path):
    """In process: a search run tags its architecture's digest, the retrain run reading that file
    names it and logs its model, the evaluation run reading the model names both and links its
    metrics to the LoggedModel; every run has MLflow's source and git tags."""
    arch = tmp_path / "genotype.json"
    arch.write_text('{"arch": 1}')
    model_pt = tmp_path / "model.pt"
    splits = tiny_splits()
    with stage_run(
        tracked, "search", run="darts", method="darts", variant="default", seed=0, keys=("data", "search")
    ) as search:
        search.set_tags({"arch_sha256": file_digest(arch)})
    with stage_run(
        tracked, "retrain", run="darts", method="darts", variant="default", seed=0, keys=("data", "retrain")
    ) as retrain:
        assert retrain.link_producer("arch_sha256", arch, run="random") == {}  # another run's search
        assert retrain.link_producer("arch_sha256", arch, run="darts") == {"search_run_id": search.run_id}
        model = build_model("small_cnn", 10, 1, "digits", width=4, depth=2)
        save_model(
            model_pt,
            model,
            {
                "kind": "family",
                "family": "small_cnn",
                "num_classes": 10,
                "input_channels": 1,
                "dataset": "digits",
                "width": 4,
                "depth": 2,
            },
        )
        model_id = retrain.log_checkpoint(model_pt, splits.val.x[:2])
        assert retrain.log_checkpoint(model_pt, splits.val.x[:2]) == model_id  # a resumed stage: no second model
    with stage_run(
        tracked, "evaluate", run="darts", method="darts", variant="default", seed=0, keys=("data", "evaluate")
    ) as evaluate:
        assert evaluate.link_producer("model_sha256", model_pt) == {
            "retrain_run_id": retrain.run_id,
            "search_run_id": search.run_id,
            "model_id": model_id,
        }
        evaluate.log_params(tracked, ("search", "retrain"))
        evaluate.log_dataset(splits.test, "digits/test", "test", link=True)
        evaluate.log_metrics({"robust_acc": 0.25})
    client = _client(tracked)
    head, branch = _git("rev-parse", "HEAD"), _git("rev-parse", "--abbrev-ref", "HEAD")
    for logger in (search, retrain, evaluate):
        tags = client.get_run(logger.run_id).data.tags
        command = f"rnas {tags['stage']} --run darts --seed 0"
        assert tags["mlflow.source.name"] == command and tags["mlflow.source.type"] == "LOCAL"
        assert tags.get("mlflow.source.git.commit") == head  # None on both sides outside a checkout
        assert tags.get("mlflow.source.git.branch") == (branch if branch not in (None, "HEAD") else None)
        assert tags.get("mlflow.source.git.dirty") in ((None,) if head is None else ("true", "false"))
        assert "git_commit" not in tags and "mlflow.user" in tags
    ev = client.get_run(evaluate.run_id)
    assert {"search.epochs", "retrain.train.epochs", "evaluate.n_examples"} <= set(ev.data.params)
    assert [m.model_id for m in ev.inputs.model_inputs] == [model_id]
    linked = {m.key: m for m in client.get_logged_model(model_id).metrics}
    assert linked["robust_acc"].run_id == evaluate.run_id and linked["robust_acc"].dataset_name == "digits/test"


def test_a_logged_model_pins_the_installed_versions_without_scanning_every_distribution(tracked, tmp_path, monkeypatch):
    """The model's requirements are the installed versions of its packages; MLflow's own check
    of them (which maps every installed distribution first) is skipped while it is logged, and
    put back after."""
    import importlib_metadata
    import mlflow.pyfunc
    from mlflow.utils import environment

    scans = []
    real = importlib_metadata.packages_distributions
    monkeypatch.setattr(importlib_metadata, "packages_distributions", lambda: scans.append(1) or real())
    check, pyfunc_check = (
        environment.warn_dependency_requirement_mismatches,
        mlflow.pyfunc.warn_dependency_requirement_mismatches,
    )
    model_pt = tmp_path / "model.pt"
    args = {"kind": "family", "family": "small_cnn", "num_classes": 10, "input_channels": 1, "dataset": "digits"}
    save_model(model_pt, build_model("small_cnn", 10, 1, "digits", width=4, depth=2), {**args, "width": 4, "depth": 2})
    with stage_run(
        tracked, "retrain", run="darts", method="darts", variant="default", seed=0, keys=("data", "retrain")
    ) as retrain:
        model_id = retrain.log_checkpoint(model_pt, tiny_splits().val.x[:2])
    assert scans == [] and environment.warn_dependency_requirement_mismatches is check
    assert mlflow.pyfunc.warn_dependency_requirement_mismatches is pyfunc_check
    location = _client(tracked).get_logged_model(model_id).artifact_location
    folder = location.removeprefix("file://")
    pins = dict(line.split("==") for line in Path(folder, "requirements.txt").read_text().split() if "==" in line)
    from importlib.metadata import version

    assert pins["torch"] == version("torch") and pins["mlflow"] == version("mlflow"), pins


def test_a_file_no_run_wrote_links_nothing(tracked, tmp_path, caplog):
    stray = tmp_path / "model.pt"
    stray.write_bytes(b"not from a tracked run")
    with stage_run(
        tracked, "evaluate", run="darts", method="darts", variant="default", seed=0, keys=("evaluate",)
    ) as evaluate:
        assert evaluate.link_producer("model_sha256", stray) == {}
    assert evaluate.model_id is None
    assert "no finished MLflow run in the store wrote" in caplog.text
    assert not any(k.endswith("_run_id") for k in _client(tracked).get_run(evaluate.run_id).data.tags)


# -- slow: the real stages, as Snakemake runs them ------------------------------------------


@pytest.fixture(scope="session")
def project(tmp_path_factory, worker_id):
    """teacher, search darts, retrain darts and evaluate darts of a tiny project, each command
    with stdout and stderr to its log file (Snakemake's ``> {log} 2>&1``) and progress bars on.
    Built once per test session and only read by the tests (:func:`conftest.built_once`)."""
    p = tiny_params(runs=("darts",))
    p["pipeline"]["progress"] = True  # bars asked for; stderr is a file, so none may be drawn
    p["teacher"]["train"]["epochs"] = EPOCHS
    p["search"].update(epochs=EPOCHS, batch_size=64)  # 10 steps an epoch
    p["retrain"]["train"]["epochs"] = EPOCHS
    p["evaluate"].update(attacks=["fgsm", "pgd20"], certify_method="none")

    def build(tmp: Path) -> None:
        q = {**p, "tracking": {**p["tracking"], "store": str(tmp / "mlflow.db")}}  # absolute: tests read it
        (tmp / "params.yaml").write_text(yaml.safe_dump(q, sort_keys=False))
        env = dict(os.environ, OMP_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet")
        for key in ("MLFLOW_TRACKING_URI", "RNAS_PARENT_RUN_ID"):
            env.pop(key, None)
        commands = {
            "teacher": ["teacher"],
            "search": ["search", "--run", "darts", "--seed", "0"],
            "retrain": ["retrain", "--run", "darts", "--seed", "0"],
            "evaluate": ["evaluate", "--run", "darts", "--seed", "0"],
        }
        for stage, args in commands.items():
            with open(tmp / f"{stage}.log", "w") as log:
                proc = subprocess.run(
                    [sys.executable, "-m", "rnas.cli", *args],
                    cwd=tmp,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=900,
                    check=False,
                )
            assert proc.returncode == 0, (tmp / f"{stage}.log").read_text()[-3000:]

    tmp = built_once(tmp_path_factory, worker_id, "tracked_project", build)
    return tmp, params_from_dict(yaml.safe_load((tmp / "params.yaml").read_text()))


@pytest.mark.slow
def test_stage_logs_one_line_per_epoch_and_no_carriage_returns(project):
    tmp, _ = project
    for stage, desc in (("teacher", "teacher"), ("search", "search darts"), ("retrain", "retrain darts")):
        text = (tmp / f"{stage}.log").read_bytes().decode()  # not read_text: it turns "\r" into "\n"
        assert "\r" not in text, f"{stage}.log holds progress-bar fragments"
        epochs = re.findall(rf" INFO {desc} epoch (\d+)/{EPOCHS}: .*, [\d.]+ s$", text, flags=re.MULTILINE)
        assert epochs == [str(e) for e in range(1, EPOCHS + 1)], text[-3000:]
    text = (tmp / "evaluate.log").read_bytes().decode()
    assert "\r" not in text
    for attack in ("fgsm", "pgd20"):  # one line per attack
        assert (
            len(
                re.findall(
                    rf" INFO evaluate {attack}: accuracy [\d.]+ on 16 examples, [\d.]+ s$", text, flags=re.MULTILINE
                )
            )
            == 1
        ), text[-3000:]


@pytest.mark.slow
def test_logged_models_load_through_mlflow_and_predict_as_model_pt(project):
    """In a fresh process, ``mlflow.pytorch.load_model("models:/<id>")`` of the teacher's and the
    retrained model gives the predictions of ``model.pt`` on the test examples."""
    tmp, params = project
    runs = _stage_runs(params)
    files = {"teacher": tmp / "results/digits/teacher/model.pt", "retrain": tmp / "results/digits/darts/seed0/model.pt"}
    checks = {stage: (runs[stage].data.tags["model_id"], str(path)) for stage, path in files.items()}
    script = """
import json, sys
import mlflow.pytorch, torch
from mlflow.models import get_model_info
from rnas.checkpoint import load_model
from rnas.data import load_splits
x = load_splits("digits", seed=0, image_size=8).test.x[:64]
out = {}
for stage, (model_id, path) in json.loads(sys.argv[1]).items():
    logged = mlflow.pytorch.load_model(f"models:/{model_id}")
    reference, _ = load_model(path)
    info = get_model_info(f"models:/{model_id}")
    with torch.no_grad():
        same = torch.equal(logged(x).argmax(1), reference(x).argmax(1)) and torch.allclose(logged(x), reference(x))
    out[stage] = {"same": same, "training": logged.training, "signature": info.signature.inputs.to_dict(),
                  "example": info.saved_input_example_info is not None}
print(json.dumps(out))
"""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri(params.tracking), GIT_PYTHON_REFRESH="quiet")
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(checks)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for stage in checks:
        assert result[stage]["same"] and not result[stage]["training"], result
        assert result[stage]["example"], result
        assert result[stage]["signature"] == [
            {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}
        ]


@pytest.mark.slow
def test_stage_runs_name_their_producers_and_inputs(project):
    _, params = project
    runs = _stage_runs(params)
    search, retrain, evaluate, teacher = runs["search"], runs["retrain"], runs["evaluate"], runs["teacher"]
    assert retrain.data.tags["search_run_id"] == search.info.run_id
    ev = evaluate.data.tags
    assert (ev["search_run_id"], ev["retrain_run_id"], ev["model_id"]) == (
        search.info.run_id,
        retrain.info.run_id,
        retrain.data.tags["model_id"],
    )
    assert ev["mlflow.source.name"] == "rnas evaluate --run darts --seed 0"
    # the evaluation run carries the search and retrain params besides its own (Compare shows them)
    assert {"search.epochs", "search.arch_lr", "retrain.train.lr", "evaluate.epsilon"} <= set(evaluate.data.params)
    assert evaluate.data.params["search.epochs"] == str(EPOCHS)
    # its metrics are linked to the retrain run's LoggedModel and to the test examples
    model = _client(params).get_logged_model(ev["model_id"])
    assert model.source_run_id == retrain.info.run_id and str(model.status) == "READY"
    linked = {m.key: m for m in model.metrics if m.run_id == evaluate.info.run_id}
    assert {"clean_acc", "fgsm_acc", "pgd20_acc", "robust_acc"} <= set(linked)
    assert linked["robust_acc"].value == evaluate.data.metrics["robust_acc"]

    # the splits as run inputs: training and validation for the training stages (the same
    # digests for one seed), the evaluated test examples for the evaluation
    def inputs(run):
        return {d.dataset.name: (d.dataset.digest, d.tags[0].value) for d in run.inputs.dataset_inputs}

    assert inputs(search) == inputs(retrain) and set(inputs(teacher)) == {"digits/train", "digits/val"}
    assert inputs(retrain)["digits/train"][1] == "training" and inputs(retrain)["digits/val"][1] == "validation"
    assert set(inputs(evaluate)) == {"digits/test"} and inputs(evaluate)["digits/test"][1] == "test"
    assert linked["robust_acc"].dataset_digest == inputs(evaluate)["digits/test"][0]
