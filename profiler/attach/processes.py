"""Server processes of an attached vLLM (from --pid or its listening port) and their GPU memory.

The process tree is rescanned every few seconds: each new process gets a ``processes`` row with
its role (``frontend``, ``engine_core``, ``worker``, ``helper``), so the NVML per-process samples
(taken by ``profiler.recorder.nvml``'s sampler, all processes on each device) can be attributed. NVML is
only sampled when a server runs on this host.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

from profiler.session.writer import SessionWriter

RESCAN_S = 5.0
"""How often the server's process tree is looked at again for new processes."""


@dataclass(frozen=True)
class ServerProcess:
    """One process of a server."""

    pid: int
    role: str
    rank: int | None = None


def is_local(url: str) -> bool:
    """True when ``url``'s host is this machine (loopback, a local address or the host name)."""
    host = urlsplit(url).hostname or ""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        try:
            addr = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, ValueError):
            return False
    if addr.is_loopback or addr.is_unspecified:
        return True
    local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    return str(addr) in local


def listening_pid(port: int) -> int | None:
    """Pid of the process listening on TCP ``port`` (None when unknown or not permitted)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None


def url_port(url: str) -> int:
    """The TCP port of an http(s) URL (default ports filled in)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


_WORKER = re.compile(r"worker(?:_[a-z]*?(\d+))?", re.IGNORECASE)


def role_of(proc: psutil.Process, root_pid: int) -> tuple[str, int | None]:
    """Role and rank of a server process, from vLLM's process titles (``VLLM::EngineCore``...)."""
    if proc.pid == root_pid:
        return "frontend", None
    try:
        name = proc.name()
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "helper", None
    title = cmd[0] if cmd else name
    for text in (title, name):
        if "EngineCore" in text:
            return "engine_core", None
        m = _WORKER.search(text) if text.startswith("VLLM::") else None
        if m:
            return "worker", int(m.group(1)) if m.group(1) else None
        if text.startswith("VLLM::"):
            return text[len("VLLM::"):].lower() or "helper", None
    return "helper", None


def server_processes(root_pid: int) -> list[ServerProcess]:
    """The server's root process and all its descendants, with roles."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        role, rank = role_of(p, root_pid)
        out.append(ServerProcess(p.pid, role, rank))
    return out


class ProcessWatcher:
    """Records the server's processes in the session as they appear."""

    def __init__(self, writer: SessionWriter, root_pid: int, engine_id: int | None,
                 seen: set[int] | None = None) -> None:
        self.writer = writer
        self.root_pid = root_pid
        self.engine_id = engine_id
        self._seen: set[int] = seen if seen is not None else set()
        """Pids already recorded (shared by the watchers of one session: one row per process)."""
        self._next_scan_s = 0.0

    def poll(self) -> None:
        """Rescan if due; append a ``processes`` row for every process not seen before."""
        now = time.monotonic()
        if now < self._next_scan_s:
            return
        self._next_scan_s = now + RESCAN_S
        host = socket.gethostname()
        for sp in server_processes(self.root_pid):
            if sp.pid in self._seen:
                continue
            self._seen.add(sp.pid)
            try:
                started = psutil.Process(sp.pid).create_time()
            except psutil.NoSuchProcess:
                continue
            self.writer.append(
                "processes", (sp.pid, sp.role, sp.rank, self.engine_id, host, started)
            )


def start_gpu_sampling(writer: SessionWriter, period_s: float) -> bool:
    """Start NVML sampling of every device and process (one ``nvml_off`` event if impossible)."""
    from profiler.recorder.nvml import start_nvml_sampler

    return start_nvml_sampler(writer, period_s)


def stop_gpu_sampling() -> None:
    """Stop the NVML sampler (no-op when it never started)."""
    from profiler.recorder.nvml import stop_nvml_sampler

    stop_nvml_sampler()
