"""``kvscope attach`` on endpoints that are not usable vLLM servers: one line, non-zero exit, no file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from profiler.attach.kv_events import (
    KvEventsConfigError,
    connectable,
    parse_endpoint_arg,
    source_for,
    vllm_binds,
)
from profiler.attach.session import AttachError, _on_this_host
from tests.support.ports import free_port

KVSCOPE = str(Path(sys.executable).parent / "kvscope")
"""The installed console script (``python -m profiler.cli`` would duplicate its classes)."""




def other_exporter_text() -> bytes:
    """A real Prometheus exposition from a service that is not vLLM."""
    reg = CollectorRegistry()
    Counter("http_requests", "Requests served", registry=reg).inc(3)
    return generate_latest(reg)


BODIES: dict[str, tuple[int, bytes]] = {
    "/other/metrics": (200, other_exporter_text()),
    "/garbage/metrics": (200, bytes(range(256)) * 4),
    "/html/metrics": (200, b"<html><body>hello</body></html>"),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path.startswith("/slow/"):
            time.sleep(3)
        status, body = BODIES.get(self.path, (404, b"not found"))
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def attach(tmp_path: Path, *args: str) -> tuple[int, list[str], Path]:
    session = tmp_path / "s.kvscope"
    env = dict(os.environ)
    env.pop("KVSCOPE_SESSION", None)
    r = subprocess.run([KVSCOPE, "attach", *args, "--session", str(session)],
                       capture_output=True, text=True, timeout=60, env=env)
    return r.returncode, r.stderr.strip().splitlines(), session


@pytest.mark.parametrize(("path", "expected"), [
    ("/other", "has no vllm: metrics; not a vLLM server"),
    ("/garbage", "not Prometheus text"),
    ("/html", "not Prometheus text"),
    ("/nothing", "no /metrics endpoint (HTTP 404); not a vLLM server"),
])
def test_non_vllm_http_server(http_server: str, tmp_path: Path, path: str, expected: str) -> None:
    rc, lines, session = attach(tmp_path, http_server + path)
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("kvscope: ") and expected in lines[0], lines
    assert not session.exists()


def test_closed_port(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there once the probe socket is closed
    rc, lines, session = attach(tmp_path, f"http://127.0.0.1:{port}")
    assert rc == 2
    assert lines == [f"kvscope: cannot reach http://127.0.0.1:{port}/metrics: connection refused "
                     "(is the server running on that port?)"]
    assert not session.exists()


def test_timeout(http_server: str, tmp_path: Path) -> None:
    rc, lines, _ = attach(tmp_path, http_server + "/slow", "--timeout-s", "0.5")
    assert rc == 2 and len(lines) == 1 and "timed out" in lines[0], lines


def test_bad_arguments(http_server: str, tmp_path: Path) -> None:
    rc, lines, _ = attach(tmp_path, "localhost:8000")
    assert rc == 2 and lines == ["kvscope: 'localhost:8000': server URL must start with http:// or https://"]
    (tmp_path / "s.kvscope").write_bytes(b"")
    rc, lines, _ = attach(tmp_path, http_server + "/other")
    assert rc == 2 and len(lines) == 1 and "already exists" in lines[0]
    rc, lines, _ = attach(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2", "--pid", "5")
    assert rc == 2 and len(lines) == 1 and "--pid" in lines[0]


def test_kv_endpoint_arguments() -> None:
    src = parse_endpoint_arg("tcp://10.0.0.2:5557,tcp://10.0.0.2:5558")
    assert (src.endpoint, src.replay_endpoint) == ("tcp://10.0.0.2:5557", "tcp://10.0.0.2:5558")
    assert parse_endpoint_arg("tcp://h:1").replay_endpoint is None
    for bad in ("5557", "http://h:1", "tcp://a:1,tcp://b:2,tcp://c:3"):
        with pytest.raises(KvEventsConfigError, match="expected auto or tcp://"):
            parse_endpoint_arg(bad)
    # vLLM reports bind addresses; kvscope connects to the server's host instead
    assert connectable("tcp://*:5557", "http://gpu-box:8000") == "tcp://gpu-box:5557"
    assert connectable("tcp://0.0.0.0:5557", "http://10.1.2.3:8000") == "tcp://10.1.2.3:5557"
    assert connectable("tcp://10.9.9.9:5557", "http://gpu-box:8000") == "tcp://10.9.9.9:5557"
    with pytest.raises(KvEventsConfigError, match="only the server process can read"):
        connectable("inproc://kv", "http://h:1")


def test_who_binds_follows_vllm() -> None:
    """vLLM binds wildcard/ipc endpoints (kvscope connects) and connects to concrete ones (kvscope
    listens); its replay socket always binds (kvscope connects)."""
    wild = source_for("tcp://*:5557", "tcp://*:5558", "http://gpu-box:8000")
    assert (wild.endpoint, wild.replay_endpoint, wild.bind) == (
        "tcp://gpu-box:5557", "tcp://gpu-box:5558", False)
    concrete = source_for("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558", "http://127.0.0.1:8000")
    assert (concrete.endpoint, concrete.replay_endpoint, concrete.bind) == (
        "tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558", True)
    assert source_for("tcp://localhost:5557", None, "http://localhost:8000").endpoint == (
        "tcp://127.0.0.1:5557")
    assert not source_for("tcp://[::]:5557", None, "http://h:8000").bind
    assert not source_for("ipc:///tmp/kv", None, "http://h:8000").bind
    for ep in ("tcp://*:1", "tcp://[::]:1", "ipc:///x", "inproc://x"):
        assert vllm_binds(ep), ep
    assert not vllm_binds("tcp://10.0.0.2:1") and not vllm_binds("tcp://localhost:1")


def test_loopback_publisher_of_a_remote_server_is_one_line() -> None:
    src = source_for("tcp://127.0.0.1:5557", None, "http://203.0.113.9:8000")
    with pytest.raises(AttachError, match="its own loopback: run kvscope attach on that host"):
        _on_this_host([src], "http://203.0.113.9:8000")
    assert _on_this_host([src], "http://127.0.0.1:8000") == [src]
