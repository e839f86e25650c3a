"""A throw-away single-node SLURM cluster on localhost, for tests/test_slurm.py.

Everything lives in one temporary folder: a fresh munge key and socket, ``slurm.conf`` (this
host as the only node, CPUs=2, RealMemory from ``free -m``, linuxproc process tracking, no
task plugin, no cgroups, no accounting database), the controller's state, slurmd's spool, pid
files and logs. Clients find the cluster through ``SLURM_CONF`` (see :meth:`LocalSlurm.env`),
so a SLURM installation already configured on the machine is left alone. ``slurmctld`` and
``slurmd`` run in the foreground (``-D``) as children of the test and are stopped by pid.

Without slurmdbd there is no accounting database: completed jobs stay visible to ``squeue``
and ``sacct`` (which then asks slurmctld) for ``MinJobAge`` seconds, and every finished job is
also appended to a job-completion text file (``JobCompType=jobcomp/filetxt``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sbatch", "squeue", "sacct", "sinfo", "scontrol", "srun")


class SlurmUnavailable(RuntimeError):
    """SLURM or munge is not installed, or the local cluster did not come up."""


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin") if (p := Path(d) / name).is_file()), None
    )


def missing_binaries() -> list[str]:
    return [b for b in (*DAEMONS, *CLIENTS) if find_binary(b) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def total_memory_mb() -> int:
    """RealMemory of the node: total memory as ``free -m`` reports it (MiB)."""
    out = subprocess.run(["free", "-m"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Mem:"):
            return int(line.split()[1])
    raise SlurmUnavailable(f"cannot read total memory from `free -m`:\n{out}")


def slurm_conf(
    root: Path,
    host: str,
    cpus: int,
    memory_mb: int,
    ctld_port: int,
    slurmd_port: int,
    munge_socket: Path,
    min_job_age_s: int = 900,
) -> str:
    """slurm.conf of a one-node cluster whose every path is under ``root``."""
    return f"""\
# Single-node test cluster written by tests/slurm/cluster.py (not for production).
ClusterName=rnastest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge={min_job_age_s}
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """Start munged, slurmctld and slurmd under ``root``; ``stop()`` ends them by pid."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]  # = `hostname -s`
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment of clients of this cluster: ``SLURM_CONF``, and a ``bin/`` first on PATH
        whose ``srun`` sets it again: the executor's job step drops every ``SLURM_*`` variable
        before calling ``srun`` inside a job, which then finds only a system-wide slurm.conf."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _write_wrappers(self) -> None:
        bindir = self.root / "bin"
        bindir.mkdir(exist_ok=True)
        for name in ("srun",):
            real = find_binary(name) or name
            wrapper = bindir / name
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{real}" "$@"\n')
            wrapper.chmod(0o755)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(
            [find_binary(name) or name, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
        )
        proc._rnas_log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def start(self, timeout_s: float = 60.0) -> LocalSlurm:
        missing = missing_binaries()
        if missing:
            raise SlurmUnavailable(f"not installed: {', '.join(missing)} (run tests/slurm/setup.sh)")
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        self._write_wrappers()
        (self.root / "spool").mkdir(parents=True, exist_ok=True)
        munge_dir = self.root / "munge"
        munge_dir.mkdir(mode=0o700, exist_ok=True)
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = munge_dir / "munge.socket"
        self._spawn(
            "munged",
            [
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={munge_dir}/munged.pid",
                f"--log-file={munge_dir}/munged.log",
                f"--seed-file={munge_dir}/munged.seed",
            ],
        )
        self._wait(lambda: sock.exists(), timeout_s, "munged did not create its socket")
        memory = total_memory_mb()
        self.conf.write_text(slurm_conf(self.root, self.host, self.cpus, memory, _free_port(), _free_port(), sock))
        self._spawn("slurmctld", ["-D", "-i", "-f", str(self.conf)])
        self._wait(self._controller_up, timeout_s, "slurmctld did not answer")
        self._spawn("slurmd", ["-D", "-f", str(self.conf), "-N", self.host])
        self._wait(self._node_idle, timeout_s, "the node did not become idle")
        return self

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [find_binary(args[0]) or args[0], *args[1:]], capture_output=True, text=True, env=self.env(), timeout=30
        )

    def _controller_up(self) -> bool:
        return self._run("scontrol", "ping").stdout.count("UP") > 0

    def _node_idle(self) -> bool:
        state = self._run("sinfo", "-h", "-N", "-o", "%T").stdout.strip()
        return state.startswith("idle")

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise SlurmUnavailable(
                    f"{what}: {Path(dead[0].args[0]).name} exited with {dead[0].returncode}; logs:\n{self.logs()}"
                )
            if ready():
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"{what} within {timeout_s:.0f} s; logs:\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out", "munged.out"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            proc._rnas_log.close()  # type: ignore[attr-defined]
        self.procs.clear()

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
