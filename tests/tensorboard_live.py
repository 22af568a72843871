"""A real TensorBoard server on 127.0.0.1 over a log dir, read through its HTTP API (what the
dashboard itself calls): runs, scalar tags and values, HParams columns, text tags."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_tensorboard(logdir: Path, timeout: float = 60) -> Iterator[Callable[..., Any]]:
    """Serve `logdir`; yields `get(path, body=None)` -> the JSON answer (POST when `body`);
    `get.base` is the server's URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
         "127.0.0.1", "--port", str(port), "--load_fast=false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def get(path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        request = urllib.request.Request(base + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    get.base = base  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + timeout
        while True:  # serving, and the first load of the runs done
            try:
                if get("/data/runs"):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
                raise RuntimeError(f"TensorBoard did not serve {logdir}: {output[-2000:]}")
            time.sleep(0.3)
        yield get
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")
