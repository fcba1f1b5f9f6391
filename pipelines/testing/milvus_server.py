"""A local Milvus standalone server for tests and benchmarks (the ``milvus-server`` extra).

The PyPI package ``milvus==2.3.5`` carries a Milvus 2.3.5 standalone binary, compressed; its
``MilvusServerConfig`` writes the server's config and its unpacker unpacks the binaries (about
250 MB, ~15 s) into a data directory. ``MilvusProcess`` unpacks them once into a cache directory
and hard-links them into each fresh data directory, so a server starts in a few seconds.

Milvus 2.3 cannot be told to listen on one address (its gRPC servers bind every interface;
milvus-io/milvus#26538), so the server runs in a network namespace of its own that has only a
loopback interface (``unshare --net``; needs root or CAP_SYS_ADMIN), where no other host can
reach it and its fixed ports clash with nothing, and a relay in this process listens on
127.0.0.1 here and connects to the server's port inside that namespace. Every component also
advertises 127.0.0.1.

The 2.3.5 server does not exit on SIGTERM; ``stop`` kills it (SIGKILL) by its PID. Data that
was flushed survives that; a restart on the same directory needs ~30 s for etcd's stale
session to expire, so tests that restart use a directory of their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["MilvusProcess", "can_isolate"]

_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def can_isolate() -> str:
    """"" when this machine can run a server in a network namespace of its own, else why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "`unshare` (util-linux) and `ip` (iproute2) are needed"
    done = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`unshare --net` failed (needs root or CAP_SYS_ADMIN): {done.stderr.strip()[:200]}"
    return ""


class MilvusProcess:
    """One Milvus standalone server on 127.0.0.1 with its data under ``data_dir``."""

    def __init__(self, data_dir: Path, bin_cache: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.bin_cache = bin_cache
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.relay: _Relay | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> MilvusProcess:
        from milvus import MilvusServerConfig  # the milvus-server extra

        if shutil.which("unshare") is None or shutil.which("ip") is None:
            raise RuntimeError("starting Milvus on loopback only needs `unshare` (util-linux) and `ip` (iproute2)")
        config = MilvusServerConfig(data_dir=str(self.data_dir))
        for component in _COMPONENTS:
            config.set(f"{component}.ip", "127.0.0.1")
        config.set("etcd_log_level", "warn")
        config.resolve()
        inner_port = int(config.get("proxy_port"))
        self._binaries(config.base_data_dir)
        bin_dir = self.data_dir / "bin"
        env = dict(os.environ, DEPLOY_MODE="STANDALONE", METRICS_PORT=str(_HEALTH_PORT),
                   MILVUS_RUN_DIR=str(self.data_dir / "run"),
                   LD_LIBRARY_PATH=f"{bin_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}")
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # a namespace with only loopback: bring it up, then become the server (same pid)
        cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" run standalone', str(bin_dir / "milvus")]
        with open(logs / "milvus-stdout.log", "ab") as out, open(logs / "milvus-stderr.log", "ab") as err:
            self.proc = subprocess.Popen(cmd, cwd=self.data_dir, env=env, stdout=out, stderr=err,
                                         start_new_session=True)
        try:
            self.relay = _Relay(f"/proc/{self.proc.pid}/ns/net", inner_port)
            self.port = self.relay.port
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill the server (SIGKILL: 2.3.5 ignores SIGTERM) and wait for it."""
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.close()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def __enter__(self) -> MilvusProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _binaries(self, base: str) -> None:
        """Unpack the binaries into the cache (once) and hard-link them into the data directory."""
        from milvus import _initialize_data_files

        target = Path(base) / "bin"
        if self.bin_cache is None:
            _initialize_data_files(base)
            return
        if not (self.bin_cache / "bin" / "milvus").exists():
            self.bin_cache.mkdir(parents=True, exist_ok=True)
            _initialize_data_files(str(self.bin_cache))
        target.mkdir(parents=True, exist_ok=True)
        for f in (self.bin_cache / "bin").iterdir():
            dest = target / f.name
            if not dest.exists():
                try:
                    os.link(f, dest)
                except OSError:  # another filesystem: copy
                    shutil.copy2(f, dest)

    def _wait_ready(self, timeout_s: float) -> None:
        """Wait until the server's health endpoint (inside its namespace) says OK.

        No client may try before that: pymilvus remembers a failed connection to an address.
        """
        assert self.relay is not None
        deadline, last = time.monotonic() + timeout_s, "nothing"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus exited with {self.proc.returncode}; see {self.data_dir / 'logs'}")
            try:
                with self.relay.connect_inside(_HEALTH_PORT) as sock:
                    sock.settimeout(3)
                    sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    reply = b""
                    while chunk := sock.recv(4096):
                        reply += chunk
                    if reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0] and b"OK" in reply:
                        return
                    last = reply[-80:].decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise TimeoutError(f"milvus did not answer in {timeout_s:.0f} s (last: {last}); see {self.data_dir / 'logs'}")


class _Relay:
    """Listens on 127.0.0.1 (a free port) here; each connection is joined to ``port`` on the
    loopback of the network namespace ``netns`` (a thread enters it just to connect)."""

    def __init__(self, netns: str, port: int) -> None:
        ours = os.readlink("/proc/self/ns/net")
        for _ in range(500):  # until unshare has moved the process into its new namespace
            with contextlib.suppress(OSError):
                if os.readlink(netns) != ours:
                    self._ns = os.open(netns, os.O_RDONLY)
                    break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"the server did not get a network namespace of its own ({netns})")
        self.inner_port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True, name="milvus-relay").start()

    def _accept(self) -> None:
        while True:
            try:
                outer, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                inner = self.connect_inside(self.inner_port)
            except OSError:
                outer.close()
                continue
            for a, b in ((outer, inner), (inner, outer)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def connect_inside(self, port: int) -> socket.socket:
        got: list[socket.socket | BaseException] = []

        def enter() -> None:  # a thread of its own: setns changes the calling thread's namespace
            try:
                if _libc().setns(self._ns, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
                got.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except BaseException as exc:
                got.append(exc)

        t = threading.Thread(target=enter)
        t.start()
        t.join()
        if isinstance(got[0], BaseException):
            raise OSError(f"cannot reach milvus inside its namespace: {got[0]}")
        got[0].settimeout(None)
        return got[0]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        with contextlib.suppress(OSError):
            os.close(self._ns)


_CLONE_NEWNET = 0x40000000
_HEALTH_PORT = 9091  # inside the server's namespace, where it clashes with nothing


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            src.close()
