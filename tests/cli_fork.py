"""`python run.py ARGS` as a fork of a process that has already imported what run.py imports.

A CLI run in the suite spent most of its time starting: torch, transformers, TRL, datasets and
PEFT take ~9 s to import on these 2-core machines, and a one-step run ~3 s more. So each test
worker starts one zygote: a `python` that imports them and runs nothing (no torch op, so no
thread pool to lose in a fork). Each run is a fork of it that does what `python run.py ARGS`
does from there on: its own argv, working directory, environment, stdin, stdout and stderr;
run.py executed as `__main__`; exit handlers run; the exit code of the process. It is a real
process of its own, so the tests' signals reach it as they reach a freshly started one.

Imports read the environment (HF_HUB_OFFLINE, OMP_NUM_THREADS, ...), so a run whose environment
differs from the zygote's (a test's `monkeypatch.setenv`) starts a fresh interpreter instead,
as do runs in a test session without pytest-xdist workers (the zygote's imports would cost more
than a handful of runs save).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = str(ROOT / "run.py")
# set by pytest for each test phase, read by nothing an import does
_VOLATILE = {"PYTEST_CURRENT_TEST"}


def cli_env() -> dict[str, str]:
    """The environment of a CLI run: the test process's, unbuffered, with Hydra's own errors."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


class ForkedRun:
    """The `subprocess.Popen` surface the tests use (pid, poll, wait, send_signal, kill,
    communicate, returncode) over a run forked from the zygote."""

    def __init__(self, zygote: _Zygote, pid: int, outputs: tuple[Path, Path], args: list[str]):
        self._zygote, self.pid, self._outputs, self.args = zygote, pid, outputs, args
        self.returncode: int | None = None
        self._output: tuple[str, str] | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.exit_code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self._zygote.exit_code(self.pid, timeout=timeout)
            if code is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = code
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        if self._output is None:
            self._output = tuple(path.read_text() for path in self._outputs)
            if self._outputs[0].parent.parent == self._zygote.tmp:  # ours, not the caller's
                shutil.rmtree(self._outputs[0].parent)
        return self._output


class _Zygote:
    """The imported-once process and the runs forked from it; thread-safe (tests start runs
    from threads), one per test worker."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.tmp = Path(tempfile.mkdtemp(prefix="cli-fork-"))
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._started: dict[int, int] = {}  # request id -> pid
        self._exits: dict[int, int] = {}  # pid -> exit code
        self._next_id = 0
        threading.Thread(target=self._read_replies, daemon=True).start()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _read_replies(self) -> None:
        for line in self._proc.stdout:
            reply = json.loads(line)
            with self._changed:
                if "exit" in reply:
                    self._exits[reply["exit"]] = reply["returncode"]
                else:  # a pid is reused once reaped: an earlier run's exit is not this one's
                    self._exits.pop(reply["pid"], None)
                    self._started[reply["id"]] = reply["pid"]
                self._changed.notify_all()
        with self._changed:  # the zygote is gone: no reply will come
            self._changed.notify_all()

    def start(
        self, args: list[str], cwd: Path, env: dict[str, str], output: Path | None
    ) -> ForkedRun:
        stem = output or Path(tempfile.mkdtemp(dir=self.tmp)) / "run"
        outputs = (stem.with_suffix(".stdout"), stem.with_suffix(".stderr"))
        for path in outputs:  # there once this returns, as `subprocess.Popen` leaves them
            path.write_text("")
        with self._lock:
            self._next_id += 1
            request = {"id": self._next_id, "argv": [RUN_PY, *args], "cwd": str(cwd)}
            request |= {"env": env, "outputs": [str(path) for path in outputs]}
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            with self._changed:
                if not self._changed.wait_for(
                    lambda: request["id"] in self._started or not self.alive(), timeout=60
                ):
                    raise RuntimeError("the CLI zygote did not fork a run in 60 s")
                if request["id"] not in self._started:
                    raise RuntimeError("the CLI zygote exited")
                pid = self._started.pop(request["id"])
        return ForkedRun(self, pid, outputs, [sys.executable, *request["argv"]])

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or not self.alive(), timeout)
            if pid not in self._exits and not self.alive():
                raise RuntimeError(f"the CLI zygote exited while run {pid} was running")
            return self._exits.pop(pid, None)

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        shutil.rmtree(self.tmp, ignore_errors=True)


_zygote: _Zygote | None = None
_zygote_lock = threading.Lock()


def _same_env(a: dict[str, str], b: dict[str, str]) -> bool:
    keys = (set(a) | set(b)) - _VOLATILE
    return all(a.get(k) == b.get(k) for k in keys)


def start_cli(
    *args: str, cwd: Path = ROOT, output: Path | None = None
) -> ForkedRun | subprocess.Popen:
    """`python run.py ARGS` started, as `subprocess.Popen` would start it, its stdout and stderr
    captured (text; into the files `output`.stdout and `output`.stderr when given, for a test
    to read while it runs); forked from the worker's zygote when the environment allows."""
    global _zygote
    env = cli_env()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        with _zygote_lock:
            if _zygote is None or not _zygote.alive():
                _zygote = _Zygote(env)
            zygote = _zygote
        if _same_env(env, zygote.env):
            return zygote.start(list(args), cwd, env, output)
    streams = [subprocess.PIPE, subprocess.PIPE]
    if output is not None:
        streams = [output.with_suffix(suffix).open("w") for suffix in (".stdout", ".stderr")]
    try:
        return subprocess.Popen(
            [sys.executable, RUN_PY, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=streams[0],
            stderr=streams[1],
            text=True,
        )
    finally:  # the child has its own copies of the files
        for stream in streams:
            if stream is not subprocess.PIPE:
                stream.close()


def stop_zygote() -> None:
    global _zygote
    if _zygote is not None and _zygote.alive():
        _zygote.close()
    _zygote = None


# --------------------------------------------------------------------------- the zygote side
def _serve() -> None:
    sys.path[0] = str(ROOT)  # as `python run.py` has it, whatever a run's working directory
    import rlhf_exp.cli  # noqa: F401  (what every run imports first)
    import rlhf_exp.compare  # noqa: F401
    import rlhf_exp.runner  # noqa: F401
    import rlhf_exp.training  # noqa: F401
    from rlhf_exp.methods import method_names

    method_names()  # imports every method's module: torch, transformers, TRL, datasets, PEFT

    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.05)
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return  # the test worker closed the pipe: its session is over
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _run_forked(request)  # never returns
                _reply({"id": request["id"], "pid": pid})
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _reply({"exit": pid, "returncode": os.waitstatus_to_exitcode(status)})


def _reply(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _run_forked(request: dict[str, Any]) -> None:
    """In the forked child: become `python run.py ARGS` and exit as it would."""
    import atexit
    import runpy
    import traceback

    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in zip((1, 2), request["outputs"], strict=True):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv = list(request["argv"])
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
        threading._shutdown()  # as the interpreter does at exit: non-daemon threads first
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        if code == -signal.SIGINT:  # Python's own exit on an uncaught KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(code & 0xFF)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
