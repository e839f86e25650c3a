"""MLflow: a parent run per pipeline invocation with the stage runs as children
(``rnas pipeline-run start|end``), identical metric names across methods, ``rnas compare``
reading the table back from the store, and the MLflow UI (a real server on a free localhost
port) serving the runs through its REST API and, in headless Chromium, opening the experiment
on its runs table through the link ``rnas init-store`` prints."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import chromium_binary, require_or_skip

from rnas import paths
from rnas.cli import main as rnas_main
from rnas.config import load_params
from rnas.pipeline import stage_keys
from rnas.stages.evaluate import log_evaluation
from rnas.tracking import parent_run_id, runs_url, stage_run, tracking_uri

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"darts": 0.81, "random": 0.70}


def _eval(robust: float, square_ok: bool = True) -> dict:
    return {
        "clean_acc": 0.98,
        "fgsm_acc": robust + 0.05,
        "pgd20_acc": robust + 0.02,
        "pgd100_acc": robust + 0.01,
        "autoattack_acc": robust,
        "robust_acc": robust,
        "cw_acc": 0.9,
        "deepfool_acc": 0.85,
        "eps_sweep": {"0.0": 0.98, "0.1": robust + 0.02},
        "params": 28354,
        "macs": 324736,
        "n_examples": 200,
        "epsilon": 0.1,
        "epsilon_l2": 0.5,
        "device": "cpu",
        "device_name": "CPU (x86_64)",
        "sanity": {"eps0_equals_clean": True, "square_not_stronger_than_whitebox": square_ok},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A params file with its own SQLite store, one pipeline invocation logged into it: a parent
    run, a search and an evaluate run per method (random's Square check failing)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    text = (ROOT / "params.yaml").read_text()
    text = re.sub(r"(?m)^  results: .*$", f"  results: {tmp / 'results'}", text)
    text = re.sub(r"(?m)^  store: .*$", f"  store: {tmp / 'mlflow.db'}", text)
    text = re.sub(r"(?m)^  runs: .*$", "  runs: [darts, random]", text)
    params_file = tmp / "params.yaml"
    params_file.write_text(text)
    params = load_params(params_file)
    env_parent = os.environ.pop("RNAS_PARENT_RUN_ID", None)
    try:
        assert rnas_main(["pipeline-run", "start", "--params", str(params_file)]) == 0
        parent = paths.pipeline_run_file(params).read_text().strip()
        assert parent_run_id(params) == parent
        for run, robust in RUNS.items():
            with stage_run(
                params, "search", run=run, method=run, variant="default", seed=0, keys=stage_keys("search", run)
            ) as tracker:
                tracker.log_metrics({"search_seconds": 40.0 if run == "darts" else 0.0})
            with stage_run(
                params, "evaluate", run=run, method=run, variant="default", seed=0, keys=stage_keys("evaluate")
            ) as tracker:
                log_evaluation(tracker, _eval(robust, square_ok=run == "darts"))
        assert rnas_main(["pipeline-run", "end", "--params", str(params_file), "--status", "FINISHED"]) == 0
    finally:
        if env_parent is not None:
            os.environ["RNAS_PARENT_RUN_ID"] = env_parent
    return params, params_file, parent


def test_parent_and_child_runs(store):
    import mlflow

    params, _, parent = store
    client = mlflow.MlflowClient(tracking_uri(params.tracking))
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.tags["stage"] == "pipeline"
    assert not paths.pipeline_run_file(params).exists() and parent_run_id(params) is None
    exp = client.get_experiment_by_name("rnas-digits")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted((r.data.tags["stage"], r.data.tags["run"]) for r in children) == [
        ("evaluate", "darts"),
        ("evaluate", "random"),
        ("search", "darts"),
        ("search", "random"),
    ]
    evals = {r.data.tags["run"]: r for r in children if r.data.tags["stage"] == "evaluate"}
    # identical metric names for every method, so "Compare" in the UI lines them up
    assert set(evals["darts"].data.metrics) == set(evals["random"].data.metrics)
    assert {"robust_acc", "autoattack_acc", "eps_sweep/0.1", "sanity_failures"} <= set(evals["darts"].data.metrics)
    assert evals["darts"].data.tags["sanity"] == "pass"
    assert evals["random"].data.tags["sanity"] == "FAIL: square_not_stronger_than_whitebox"
    assert evals["random"].data.tags["sanity.square_not_stronger_than_whitebox"] == "FAIL"


def test_end_without_start_and_restart_fails_stale_parent(store, capsys):
    import mlflow

    params, params_file, _ = store
    assert rnas_main(["pipeline-run", "end", "--params", str(params_file), "--status", "FAILED"]) == 0
    assert "nothing to end" in capsys.readouterr().err
    # a start after a killed invocation (file left behind) marks the stale parent FAILED
    assert rnas_main(["pipeline-run", "start", "--params", str(params_file)]) == 0
    first = capsys.readouterr().out.strip()
    assert rnas_main(["pipeline-run", "start", "--params", str(params_file)]) == 0
    second = capsys.readouterr().out.strip()
    client = mlflow.MlflowClient(tracking_uri(params.tracking))
    assert client.get_run(first).info.status == "FAILED" and second != first
    assert rnas_main(["pipeline-run", "end", "--params", str(params_file), "--status", "FAILED"]) == 0
    assert client.get_run(second).info.status == "FAILED"


def test_compare_prints_the_report_table(store, capsys):
    _, params_file, _ = store
    assert rnas_main(["compare", "--params", str(params_file)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("| run | seeds | clean | FGSM | PGD-20 | PGD-100 | AutoAttack | worst case")
    darts = next(line for line in lines if line.startswith("| darts |"))
    random_ = next(line for line in lines if line.startswith("| random |"))
    assert "**81.0** [" in darts and "40 s" in darts and "| CPU |" in darts and "✓ 2/2" in darts
    assert "70.0 [" in random_ and "✗ 1 failed" in random_
    # both have C&W 90%, but a run that failed a sanity check is never the column's best
    assert "**90.0**" in darts and "**90.0**" not in random_
    assert "1 sanity check failure(s)" in out and "square_not_stronger_than_whitebox" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _rendered(url: str, tmp_path: Path) -> tuple[str, str]:
    """(title, visible text) of ``url`` once headless Chromium has run the page's scripts."""
    binary = chromium_binary()
    require_or_skip(binary is not None, "no chromium binary on PATH (Debian: apt-get install chromium)")
    proc = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1400,1000",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", proc.stdout)
    titles = re.findall(r"<title>([^<]*)</title>", page)
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " | ", page)))
    return html.unescape(titles[0]) if titles else "", text


@pytest.mark.slow
def test_mlflow_ui_serves_the_runs(store, tmp_path):
    params, _, parent = store
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_bin),
        "server",
        "--backend-store-uri",
        tracking_uri(params.tracking),
        "--default-artifact-root",
        (tmp_path / "artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        experiments = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                experiments = _request(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100})
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert experiments is not None, (tmp_path / "server.log").read_text()[-3000:]
        exp = next(e for e in experiments["experiments"] if e["name"] == "rnas-digits")
        runs = _request(
            f"{base}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [exp["experiment_id"]], "filter": "tags.stage = 'evaluate'", "max_results": 100},
        )
        by_run = {}
        for r in runs["runs"]:
            tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
            by_run[tags["run"]] = ({m["key"]: m["value"] for m in r["data"]["metrics"]}, tags)
        assert set(by_run) == set(RUNS)
        for run, robust in RUNS.items():
            metrics, tags = by_run[run]
            assert metrics["robust_acc"] == pytest.approx(robust)
            assert tags["mlflow.parentRunId"] == parent
        assert urllib.request.urlopen(base + "/", timeout=10).status == 200  # the UI page itself
        # a model-training experiment (the tag MLflow 3.x UIs before the workflow switch read)
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
        # the link `rnas init-store` prints opens the runs table, not the GenAI overview
        title, text = _rendered(runs_url(params, base), tmp_path)
        assert title.startswith("Runs - "), (title, text[:2000])
        assert "pipeline/digits" in text, text[:2000]  # the invocation's parent run is a table row
        assert "Overview" not in text and "Token Usage" not in text, text[:2000]  # GenAI's tabs and charts
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
