"""The fork server (rnas/forkserver.py): a stage run in a worker is the stage run in its own process.

Same outputs, exit codes and messages; the client's directory and environment; its signals passed
on; a worker never outlives its client; a server that holds no rnas module (so an edited source
takes effect), refuses another environment and exits when the process it watches is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import tiny_params

from rnas import forkserver

BIN = Path(sys.executable).parent
USAGE = "rnas forkserver worker"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with the real preload for the module (~10 s), watching the test process."""
    path = forkserver.default_socket(owner_pid=os.getpid() * 10 + 1)
    proc = forkserver.start(path, os.getpid())
    assert proc is not None, "the fork server did not start"
    yield path
    forkserver.stop(path)
    assert proc.wait(timeout=30) == 0
    assert not Path(path).parent.exists()


def _project(folder: Path, **teacher_train) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = tiny_params(runs=("darts",))
    p["tracking"]["enabled"] = False
    p["teacher"]["train"].update(teacher_train)
    (folder / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return folder


def _env(socket: str | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != forkserver.ENV}
    env.update(OMP_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet", **extra)
    env[forkserver.ENV] = socket or "off"
    return env


def _rnas(cwd: Path, socket: str | None, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "rnas"), *args], cwd=cwd, env=_env(socket, **extra), capture_output=True, text=True, timeout=300
    )


def _worker_of(server_path: str, timeout: float = 60.0) -> psutil.Process:
    server_pid = forkserver.ping(server_path)["server_pid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(server_pid).children()
        if children:
            return children[0]
        time.sleep(0.05)
    raise AssertionError("no worker appeared")


def test_the_server_holds_no_rnas_module_a_stage_runs(server):
    reply = forkserver.ping(server)
    assert reply is not None
    assert set(reply["rnas_modules"]) <= {"rnas", "rnas.forkserver"}, reply["rnas_modules"]


def test_a_search_in_a_worker_writes_the_same_files_as_in_its_own_process(server, tmp_path):
    served, own = _project(tmp_path / "served"), _project(tmp_path / "own")
    args = ("search", "--params", "params.yaml", "--run", "darts", "--seed", "0")  # relative: the client's cwd
    a, b = _rnas(served, server, *args), _rnas(own, None, *args)
    assert a.returncode == b.returncode == 0, a.stderr[-2000:] + b.stderr[-2000:]
    assert USAGE in a.stderr and USAGE not in b.stderr  # it did run in a worker (and the other did not)
    run_dir = Path("results/digits/darts/seed0")
    for name in ("genotype.json", "alphas.json"):
        assert (served / run_dir / name).read_bytes() == (own / run_dir / name).read_bytes(), name


def test_errors_give_the_same_exit_code_and_message(server, tmp_path):
    proj = _project(tmp_path)
    for args in (("search", "--params", "missing.yaml", "--run", "darts", "--seed", "0"), ("evaluate", "--bogus")):
        a, b = _rnas(proj, server, *args), _rnas(proj, None, *args)
        assert a.returncode == b.returncode != 0, (args, a.returncode, b.returncode)
        last = [line for line in a.stderr.splitlines() if not line.startswith(USAGE)][-1]
        assert last == b.stderr.splitlines()[-1], (a.stderr, b.stderr)


def test_the_worker_sees_the_clients_environment(server, tmp_path):
    proj = _project(tmp_path / "proj")
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["tracking"]["enabled"] = True
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    other = tmp_path / "elsewhere.db"
    out = _rnas(proj, server, "init-store", "--params", "params.yaml", MLFLOW_TRACKING_URI=f"sqlite:///{other}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert USAGE in out.stderr
    assert other.is_file() and not (proj / "mlflow.db").exists()


def test_sigterm_to_the_client_ends_the_worker_as_it_would_end_the_stage(server, tmp_path):
    proj = _project(tmp_path, epochs=1000)
    client = subprocess.Popen(
        [str(BIN / "rnas"), "teacher", "--params", "params.yaml"],
        cwd=proj,
        env=_env(server),
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = _worker_of(server)
    time.sleep(2.0)  # into its training loop
    client.send_signal(signal.SIGTERM)
    _, err = client.communicate(timeout=60)
    assert client.returncode == 143, err[-2000:]
    assert "terminated by SIGTERM" in err
    assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE


def test_a_killed_client_takes_its_worker_with_it(server, tmp_path):
    proj = _project(tmp_path, epochs=1000)
    client = subprocess.Popen(
        [str(BIN / "rnas"), "teacher", "--params", "params.yaml"], cwd=proj, env=_env(server), stderr=subprocess.DEVNULL
    )
    worker = _worker_of(server)
    time.sleep(1.0)
    client.kill()
    client.wait(timeout=10)
    gone, alive = psutil.wait_procs([worker], timeout=10)
    assert not alive, "the worker outlived its killed client"


def test_no_server_or_another_environment_runs_the_command_itself(server, monkeypatch, tmp_path):
    monkeypatch.setenv(forkserver.ENV, "off")
    assert forkserver.run_remote(["arch", "--help"]) is None
    monkeypatch.setenv(forkserver.ENV, str(tmp_path / "nobody.sock"))
    assert forkserver.run_remote(["arch", "--help"]) is None
    monkeypatch.setenv(forkserver.ENV, server)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # a conda env of `--sdm conda`, say
    assert forkserver.run_remote(["arch", "--help"]) is None


def test_the_server_exits_when_the_watched_process_is_gone(tmp_path):
    watched = subprocess.Popen(["sleep", "3"])
    path = forkserver.default_socket(owner_pid=watched.pid * 10 + 2)
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rnas.forkserver",
            "serve",
            "--socket",
            path,
            "--watch-pid",
            str(watched.pid),
            "--preload",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while forkserver.ping(path) is None:
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not come up"
            time.sleep(0.05)
        watched.wait()
        assert proc.wait(timeout=15) == 0
        assert not os.path.exists(path)
    finally:
        proc.kill()
        forkserver.stop(path)


def test_exec_serves_the_rnas_commands_of_the_command_it_runs_and_stops_after(tmp_path):
    """``rnas forkserver exec -- CMD`` (``make dvc``): CMD's rnas commands run in workers; its exit
    status is CMD's; no server is left."""
    proj = _project(tmp_path)
    script = 'rnas search --params params.yaml --run random --seed 0 && echo "socket=$RNAS_FORKSERVER"; exit 3'
    env = {k: v for k, v in _env(None).items() if k != forkserver.ENV}
    out = subprocess.run(
        [str(BIN / "rnas"), "forkserver", "exec", "--", "bash", "-c", script],
        cwd=proj,
        env={**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 3, out.stderr[-2000:]
    assert USAGE in out.stderr and (proj / "results/digits/random/seed0/genotype.json").is_file()
    socket = out.stdout.split("socket=")[1].strip()
    assert socket and not Path(socket).parent.exists()
