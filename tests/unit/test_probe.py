"""shared.probe, the containers' healthcheck: exit 0 only for a 2xx answer, 1 otherwise, never 2."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from shared import probe


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, name="probe-test-server", daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_path_is_this_containers_http_port_on_loopback() -> None:
    assert probe.url_of("/readyz", {"HTTP_PORT": "9000"}) == "http://127.0.0.1:9000/readyz"
    assert probe.url_of("/healthz", {}) == "http://127.0.0.1:8080/healthz"
    assert probe.url_of("http://kube:8001/readyz", {}) == "http://kube:8001/readyz"
    with pytest.raises(ValueError, match="target must be"):
        probe.url_of("readyz", {})


def test_healthy_only_on_2xx(server: int) -> None:
    assert probe.check(f"http://127.0.0.1:{server}/readyz") is None
    assert probe.check(f"http://127.0.0.1:{server}/other") == f"http://127.0.0.1:{server}/other: HTTP 503"
    refused = probe.check(f"http://127.0.0.1:{_closed_port()}/readyz")
    assert refused and "refused" in refused.lower()


def test_module_exit_codes_as_a_healthcheck_runs_it(server: int) -> None:
    def run(*args: str, port: int = server) -> subprocess.CompletedProcess[str]:
        env = {"HTTP_PORT": str(port), "PATH": "/usr/bin:/bin"}
        cmd = [sys.executable, "-m", "shared.probe", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30, check=False)

    assert run("/readyz").returncode == 0
    failed = run("/other")
    assert failed.returncode == 1 and "unhealthy" in failed.stderr and "HTTP 503" in failed.stderr
    assert run("/readyz", port=_closed_port()).returncode == 1
    assert run().returncode == 1  # usage: 2 is reserved by Docker
    assert run("nonsense").returncode == 1


def test_mongodb_target_pings_the_wire_server(mongo_server_url: str) -> None:
    assert probe.check(mongo_server_url) is None
    assert probe.check(f"mongodb://127.0.0.1:{_closed_port()}/?directConnection=true", timeout=0.5)
