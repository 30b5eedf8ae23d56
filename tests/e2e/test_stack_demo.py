"""The whole product as separate processes: `python -m scripts.stack demo` (what `make demo` runs).

Four services, the Kubernetes and OTC emulators and the embedded MongoDB as real processes over
real HTTP and the real RabbitMQ: OTC provisions and binds both services through broker-api, the
cluster changes, and OTC's tools follow with one write per change and no dead letters. This is the
only test where every cross-service contract is exercised by the real producer and consumer.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
import uuid

from tests.conftest import ROOT, _mgmt


def test_demo_scenario_converges_with_one_write_per_change() -> None:
    vhost = f"kotc-test-demo-{uuid.uuid4().hex[:8]}"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "scripts.stack", "demo", "--vhost", vhost],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        _mgmt("DELETE", f"vhosts/{urllib.parse.quote(vhost, safe='')}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {
        line[:66].strip(): line[66:].split()
        for line in proc.stdout.splitlines()
        if line.startswith(("OTC:", "cluster:"))
    }
    writes = {step: int(cols[-1]) for step, cols in rows.items()}
    assert writes == {
        # deploy/samples/kabanero-sample.yaml: 2 mediations, 4 repositories (2 stack hubs, the
        # pipelines repository that also holds the GitOps pipelines, the gitops-map repository).
        "OTC: provision + bind both services": 2 + 4,
        "cluster: mediation 'release' added": 1,
        "cluster: mediation 'gitops' removed": 1,
        "cluster: status-only change (expect 0 writes)": 0,
        "OTC: unbind the Kabanero Events service": 2,
        "OTC: delete the Kabanero service": 4,
        # events=auto: the Events tool (OTC then provisions + binds the Events service through our
        # events broker), its 2 trigger tools, 4 GitHub tools; unbinding removes the same 7.
        "OTC: events=auto Kabanero service bound (+Events tool, 2 trig.)": 1 + 2 + 4,
        "OTC: unbind it (its Events tool and all it brought go)": 1 + 2 + 4,
        # create=true: the watcher creates the CR; its one stack hub becomes a GitHub tool, and goes.
        "OTC: create=true service: CR created, its stack hub linked": 1,
        "OTC: delete it (its CR is deleted, the GitHub tool goes)": 1,
    }
    assert "dead letters: {'otc-writer.events.dead': 0, 'otc-writer.commands.dead': 0, " in proc.stdout
    # After each step, the toolchain's tools by kind and name; the run ends with kabanero-otc status.
    first = proc.stdout.split("[1] OTC: provision + bind both services")[1].split("[2]")[0]
    assert "Kabanero Event Trigger (customtool), 2:" in first and "GitHub (githubconsolidated), 4:" in first
    assert first.count("      - kabanero-trigger ") == 2
    last = proc.stdout.split("[6] OTC: delete the Kabanero service")[1].split("summary")[0]
    assert "toolchain: no tools" in last
    status = proc.stdout.split("$ kabanero-otc status   (exit 0)")[1]
    assert "SERVICES" in status and "QUEUES" in status and "no problems found" in status
