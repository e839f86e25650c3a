"""A fork server for the ``rnas`` stage commands: torch, MLflow & co. imported once per pipeline run.

A fresh ``rnas`` process spends ~10 s before its first useful step on this kind of machine
(torch ~3 s, MLflow and its SQLAlchemy store ~5 s, foolbox, AutoAttack, torchvision, scikit-learn),
against ~2 s of work in a tiny stage and 2-4 minutes in a digits one; ``make run`` starts 58 of them.
The server imports those third-party packages once and forks a worker per command, which then
imports ``rnas`` itself (the server never imports the ``rnas`` modules a stage runs, so an edited
source file takes effect in the next command as it would in a fresh process) and runs
:func:`rnas.cli.run_command` on the command line, working directory, environment and standard
streams of the ``rnas`` process that asked (the *client*). The client stays the job that Snakemake
runs and waits for: its exit status is the worker's (a worker killed by signal N kills the client
with signal N), SIGTERM / SIGINT / SIGHUP it receives are passed on to the worker, and the worker
kills itself with SIGKILL the moment the client is gone (a killed job leaves no orphan writing its
checkpoints). Nothing in a stage's computation changes: every stage seeds its own RNGs and sets
its own thread count.

Where it is used: Snakemake's ``onstart`` starts one server per local invocation
(``workflow/rules/common.smk``) and sets ``RNAS_FORKSERVER`` for its jobs; ``rnas forkserver exec
-- CMD`` does the same around any command (``make dvc`` runs ``dvc repro`` so). Without the
variable, with ``RNAS_FORKSERVER=off``, when no server answers, or when the server runs another
Python environment or another ``rnas`` checkout than the client (``--sdm conda``), the command runs
in its own process as before. The server exits when the process it watches (Snakemake) is gone,
when asked to stop, or after ``--idle-timeout`` seconds without work.

Snakemake's ``benchmark:`` files measure the job's own process tree, i.e. the client: with the
server their wall time is right and their CPU and memory columns are the client's only. Each
worker writes its own CPU time and peak memory to the end of the job's log instead.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import logging
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from pathlib import Path

ENV = "RNAS_FORKSERVER"  # the socket's path; "off" (or unset) runs every command in its own process
# Third-party modules every stage imports; never an rnas module (see the module docstring).
PRELOAD = (
    "numpy",
    "yaml",
    "tqdm",
    "torch",
    "torch.nn.functional",
    "torchvision",
    "sklearn.datasets",
    "mlflow",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.pytorch",
    "git",
    "foolbox",
    "pyautoattack",
    "matplotlib",
)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MAX_MESSAGE = 1 << 20
STREAMS = 3  # stdin, stdout, stderr

log = logging.getLogger("rnas.forkserver")


def _rnas_dir() -> str:
    return str(Path(__file__).resolve().parent)


def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def _receive(sock: socket.socket) -> dict | None:
    data = sock.recv(MAX_MESSAGE)
    return json.loads(data) if data else None


def _connect(path: str, timeout: float | None = None) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    sock.settimeout(None)
    return sock


# ---------------------------------------------------------------------------------------------
# client


OFF = frozenset({"off", "0", "false"})  # values of RNAS_FORKSERVER that turn it off


def socket_path() -> str | None:
    """The server's socket from ``RNAS_FORKSERVER``, or None when it is unset or turned off."""
    path = os.environ.get(ENV, "").strip()
    return None if not path or path in OFF else path


def run_remote(argv: list[str]) -> int | None:
    """Run ``rnas ARGV`` in a worker of the server named by ``RNAS_FORKSERVER`` and return its exit
    code; None when there is no server to ask or it declines (the caller then runs it itself)."""
    path = socket_path()
    if path is None:
        return None
    sock = _connect(path)
    if sock is None:
        return None
    with sock:
        request = {
            "argv": list(argv),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "prefix": sys.prefix,
            "rnas_dir": _rnas_dir(),
        }
        try:
            _send(sock, request, list(range(STREAMS)))
            reply = _receive(sock)
        except OSError:
            return None
        if not reply or "pid" not in reply:  # refused (another environment) or the server is stopping
            return None
        previous = {}

        def forward(signum, frame):  # noqa: ARG001
            with contextlib.suppress(OSError):
                _send(sock, {"signal": signum})

        for signum in FORWARDED:
            previous[signum] = signal.signal(signum, forward)
        try:
            while True:
                try:
                    reply = _receive(sock)
                except OSError:
                    reply = None
                if reply is None:
                    print(f"rnas: the fork server's worker {request['argv'][:1]} was lost", file=sys.stderr)
                    return 1
                if "status" in reply:
                    break
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    code = os.waitstatus_to_exitcode(reply["status"])
    if code < 0:  # killed by a signal: end the same way, so the caller sees what a fresh process shows
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


# ---------------------------------------------------------------------------------------------
# worker (a child of the server)


def _watch_client(conn: socket.socket) -> None:
    """In a worker: pass on the client's signals; SIGKILL this process when the client is gone."""
    while True:
        try:
            message = _receive(conn)
        except (OSError, ValueError):
            message = None
        if message is None:
            os.kill(os.getpid(), signal.SIGKILL)
            return
        if "signal" in message:
            os.kill(os.getpid(), int(message["signal"]))


def _usage_line() -> str:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (
        f"rnas forkserver worker {os.getpid()}: CPU {usage.ru_utime + usage.ru_stime:.1f} s "
        f"(user {usage.ru_utime:.1f}, system {usage.ru_stime:.1f}), peak memory {usage.ru_maxrss / 1024:.0f} MiB"
    )


def _work(request: dict, fds: list[int], conn: socket.socket) -> None:
    """The worker: become the client's process (streams, directory, environment, argv), run the
    command, exit with its code. Never returns."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["rnas", *request["argv"]]
        for finalizer in list(weakref.finalize._registry):  # the server's objects (temp folders, ...)
            finalizer.atexit = False  # are not this process's to clean up at exit; its own are
        for handler in list(logging.root.handlers):  # the server's; the command configures its own
            logging.root.removeHandler(handler)
        logging.root.setLevel(logging.WARNING)
        threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
        try:
            from rnas.cli import run_command

            code = run_command(request["argv"])
        except SystemExit as err:  # argparse's errors, sys.exit in a stage
            if err.code is None or isinstance(err.code, int):
                code = err.code or 0
            else:
                print(err.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        print(_usage_line(), file=sys.stderr)
    finally:
        # What a fresh process does at exit (logging's, multiprocessing's, MLflow's atexit handlers,
        # this process's own finalizers), without the interpreter's teardown: that would finalize
        # the server's objects this copy holds (its sockets' file numbers, among others).
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)


# ---------------------------------------------------------------------------------------------
# server


def preload(modules: tuple[str, ...] = PRELOAD) -> float:
    """Import ``modules`` (what is missing is skipped); returns the seconds it took."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython
    os.environ.setdefault("MPLBACKEND", "Agg")
    t0 = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # an optional package; the worker imports (or fails on) it itself
            log.warning("preload %s: %s", name, err)
    return time.perf_counter() - t0


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Server:
    """Accept requests on ``path``; fork a worker for each; send each client its worker's status."""

    def __init__(self, path: str, watch_pid: int | None = None, idle_timeout: float = 0.0):
        self.path = path
        self.watch_pid = watch_pid
        self.idle_timeout = idle_timeout
        self.workers: dict[int, socket.socket] = {}
        self.stopping = False
        self.served = 0

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(64)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        sel = selectors.DefaultSelector()
        self._private = [listener.fileno(), wake_r, wake_w, sel.fileno()]  # closed in every worker
        sel.register(listener, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        last_work = time.monotonic()
        log.info("serving on %s (pid %d)", self.path, os.getpid())
        try:
            while True:
                for key, _ in sel.select(timeout=0.5):
                    if key.fileobj is listener:
                        conn, _ = listener.accept()
                        self._handle(conn, listener)
                    else:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 4096)
                self._reap()
                if self.workers:
                    last_work = time.monotonic()
                    continue
                if self.stopping:
                    break
                if self.watch_pid and not pid_alive(self.watch_pid):
                    log.info("process %d is gone", self.watch_pid)
                    break
                if self.idle_timeout and time.monotonic() - last_work > self.idle_timeout:
                    log.info("idle for %.0f s", self.idle_timeout)
                    break
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            listener.close()
            log.info("stopped after %d commands", self.served)

    def _stop(self, signum, frame) -> None:  # noqa: ARG002
        self.stopping = True

    def _handle(self, conn: socket.socket, listener: socket.socket) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, STREAMS)
            request = json.loads(data) if data else {}
        except (OSError, ValueError) as err:
            log.warning("bad request: %s", err)
            conn.close()
            return
        refusal = None
        if request.get("stop"):
            self.stopping = True
            refusal = "stopping"
        elif request.get("ping"):
            refusal = "pong"  # with the rnas modules it holds (none a stage runs: an edit takes effect)
        elif self.stopping:
            refusal = "stopping"
        elif request.get("prefix") != sys.prefix or request.get("rnas_dir") != _rnas_dir():
            refusal = f"this server runs {sys.prefix} and {_rnas_dir()}"
        elif len(fds) != STREAMS or not isinstance(request.get("argv"), list):
            refusal = "malformed request"
        if refusal is not None:
            for fd in fds:
                os.close(fd)
            loaded = sorted(m for m in sys.modules if m == "rnas" or m.startswith("rnas."))
            with contextlib.suppress(OSError):
                _send(conn, {"refused": refusal, "server_pid": os.getpid(), "rnas_modules": loaded})
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for fd in self._private:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for other in self.workers.values():
                other.close()
            _work(request, fds, conn)
        for fd in fds:
            os.close(fd)
        self.workers[pid] = conn
        self.served += 1
        log.info("worker %d: rnas %s", pid, " ".join(request["argv"]))
        with contextlib.suppress(OSError):
            _send(conn, {"pid": pid})

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.workers.pop(pid, None)
            if conn is None:
                continue
            log.info("worker %d: exit %d", pid, os.waitstatus_to_exitcode(status))
            with contextlib.suppress(OSError):
                _send(conn, {"status": status})
            conn.close()


# ---------------------------------------------------------------------------------------------
# starting and stopping


def default_socket(owner_pid: int | None = None) -> str:
    """A per-invocation socket path in a private (0700) folder of the temp directory, short enough
    for a Unix socket whatever the project's path."""
    owner = os.getpid() if owner_pid is None else owner_pid
    return str(Path(tempfile.gettempdir()) / f"rnas-{os.getuid()}-{owner}" / "fork.sock")


def ping(path: str, timeout: float = 2.0) -> dict | None:
    """The server's answer (``server_pid``, ``rnas_modules``) when one serves ``path``, else None."""
    sock = _connect(path, timeout)
    if sock is None:
        return None
    with sock:
        try:
            _send(sock, {"ping": True})
            sock.settimeout(timeout)
            reply = _receive(sock) or {}
        except OSError:
            return None
    return reply if reply.get("refused") == "pong" else None


def start(path: str, watch_pid: int | None, idle_timeout: float = 0.0, wait: float = 180.0) -> subprocess.Popen | None:
    """Start a server on ``path`` (its log beside the socket) and wait until it answers; None
    (after a warning) when it did not come up, in which case every command runs in its own process."""
    folder = Path(path).parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        print(f"rnas forkserver: {folder} is not a private folder of this user; not starting", file=sys.stderr)
        return None
    cmd = [sys.executable, "-m", "rnas.forkserver", "serve", "--socket", path, "--idle-timeout", str(idle_timeout)]
    if watch_pid:
        cmd += ["--watch-pid", str(watch_pid)]
    with open(folder / "server.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ping(path):
            return proc
        time.sleep(0.1)
    print(
        f"rnas forkserver: no server on {path} (see {folder / 'server.log'}); commands run in their own processes",
        file=sys.stderr,
    )
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    return None


def stop(path: str, wait: float = 30.0) -> None:
    """Ask the server on ``path`` to exit once its workers are done; wait until its process has
    ended (at most ``wait`` seconds), remove its folder."""
    sock = _connect(path, 2.0)
    if sock is not None:
        reply = {}
        with sock:
            with contextlib.suppress(OSError, ValueError):
                _send(sock, {"stop": True})
                sock.settimeout(2.0)
                reply = _receive(sock) or {}
        pid = reply.get("server_pid")
        deadline = time.monotonic() + wait
        while (os.path.exists(path) or (pid and pid_alive(pid))) and time.monotonic() < deadline:
            time.sleep(0.05)
    folder = Path(path).parent
    log_file = folder / "server.log"
    with contextlib.suppress(OSError):
        log_file.unlink()
        folder.rmdir()


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("serve", help="run a server in this process (what start runs)")
    s.add_argument("--socket", required=True)
    s.add_argument("--watch-pid", type=int, default=None, help="exit once this process is gone")
    s.add_argument("--idle-timeout", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    s.add_argument("--preload", default=",".join(PRELOAD), help="modules to import first, comma-separated")
    s = sub.add_parser("start", help="start a server in the background and wait until it answers")
    s.add_argument("--socket", required=True)
    s.add_argument("--watch-pid", type=int, default=None)
    s.add_argument("--idle-timeout", type=float, default=0.0)
    s = sub.add_parser("stop", help="stop the server on a socket once its workers are done")
    s.add_argument("--socket", required=True)
    s = sub.add_parser("exec", help="run a command (e.g. dvc repro) with a server for its rnas commands")
    s.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")


def run(args: argparse.Namespace) -> int:
    if args.action == "serve":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        log.info("preloaded in %.1f s", preload(tuple(m for m in args.preload.split(",") if m)))
        Server(args.socket, args.watch_pid, args.idle_timeout).serve()
        # Nothing is left to clean up (the socket is gone, every worker reaped): skip the
        # interpreter's teardown of torch & co., ~2 s that `rnas forkserver stop` waited for
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if args.action == "start":  # 0 either way: without a server every command runs in its own process
        start(args.socket, args.watch_pid, args.idle_timeout)
        return 0
    if args.action == "stop":
        stop(args.socket)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("rnas forkserver exec: no command given (rnas forkserver exec -- dvc repro)", file=sys.stderr)
        return 2
    path = default_socket()
    server = start(path, os.getpid()) if os.environ.get(ENV, "").strip() not in OFF else None
    env = dict(os.environ, **({ENV: path} if server else {}))
    try:
        return subprocess.run(cmd, env=env).returncode
    finally:
        if server:
            stop(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m rnas.forkserver")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
