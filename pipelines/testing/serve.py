"""Starting and stopping a real ``mmrag serve`` process for tests and benchmarks (127.0.0.1 only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["free_port", "start_serve", "stop"]

_PACKAGES_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(store: Path, log: Path, *, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                port: int | None = None, timeout_s: float = 180.0) -> tuple[subprocess.Popen[bytes], str]:
    """``mmrag serve --store STORE`` on 127.0.0.1 (``port`` or a free one), output to ``log``; returns
    the process and its base URL once ``/healthz`` answers. RuntimeError with the log's end when the
    server exits or does not answer in ``timeout_s``."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--store", str(store), "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=_PACKAGES_ROOT, env=dict(os.environ if env is None else env))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mmrag serve exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"mmrag serve did not answer in {timeout_s:.0f} s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[bytes], wait_s: float = 15.0) -> None:
    """Stop a server by its PID: SIGTERM, then SIGKILL after ``wait_s`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"
