"""``make run`` (``python -m scripts.stack run``): one at a time, a run file for the CLI, one log per
process, the Tekton broker served, and no child outlives the stack, even when the stack itself is
killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, _mgmt

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (it holds no port, consumes nothing).
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


TEKTON_SERVICE = {
    "broker": "tekton-broker",
    "instance_id": "tekton-run",
    "parameters": {"cluster": "default"},
}


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return dict(json.loads(r.read()))


def _summary(page: str, timeout: float = 60) -> str:
    """The Tekton service page's summary once the watcher of its cluster has reported."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(page, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            summary = str(json.loads(r.read())["summary"])
        if "has not reported" not in summary or time.monotonic() > deadline:
            return summary
        time.sleep(0.3)


def test_run_is_single_instance_and_leaves_no_orphans_when_killed(tmp_path: Path) -> None:
    vhost = f"kotc-test-run-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / ".run"
    cmd = [sys.executable, "-m", "scripts.stack", "run", "--vhost", vhost, "--run-dir", str(run_dir)]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: dict[str, int] = {}
    try:
        run_file = run_dir / "stack.json"
        deadline = time.monotonic() + 120
        while not run_file.exists():
            assert first.poll() is None, first.stdout.read() if first.stdout else ""
            assert time.monotonic() < deadline, "no run file"
            time.sleep(0.3)
        info = json.loads(run_file.read_text())
        assert oct(run_file.stat().st_mode & 0o777) == "0o600"  # it holds the dev stack's secrets
        pids = info["pids"]
        assert info["pid"] == first.pid and info["vhost"] == vhost
        assert set(pids) == {
            "mongo",
            "kube",
            "otc",
            "broker-api",
            "kabanero-watcher",
            "otc-writer",
            "github-linker",
        }
        assert all((run_dir / f"{name}.log").stat().st_size > 0 for name in pids)  # one log each
        # broker-api serves the Tekton broker too; the OTC emulator's platform driver reaches it
        # (as docs/deployment.md shows) and the watcher's report of the cluster shows on its page.
        otc = info["OTC_API_URL"].removesuffix("/toolchain/v2")
        reply = _post(f"{otc}/_emulator/platform/provision", TEKTON_SERVICE)
        assert reply["status"] == 200 and reply["body"]["parameters"]["cluster"] == "default", reply
        assert _summary(reply["body"]["dashboard_url"]).startswith("Tekton Pipelines v0.11.3")

        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 1
        assert f"already running (make run, pid {first.pid}" in second.stderr
        assert run_file.exists()  # the second left the first's run file alone

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [n for n, p in pids.items() if _alive(p)] == []
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        if first.stdout is not None:
            first.stdout.close()
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        _mgmt("DELETE", f"vhosts/{urllib.parse.quote(vhost, safe='')}")
