"""The whole product as separate processes: `python -m scripts.stack demo` (what `make demo` runs).

Four services, the Kubernetes and OTC emulators and the embedded MongoDB as real processes over
real HTTP and the real RabbitMQ: OTC provisions and binds the Kabanero, Kabanero Events and Tekton
services through broker-api, the cluster changes (mediations; Pipelines added, edited, deleted; an
EventListener exposed by a Route), and OTC's tools follow with one write per change, none for a
status-only change, and no dead letters. This is the
only test where every cross-service contract is exercised by the real producer and consumer.
"""

from __future__ import annotations

import re
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
        # Tekton (deploy/samples/tekton-sample.yaml): a card per Pipeline (2) and EventListener (1),
        # then one write per change of the cluster, none for a status-only change.
        "OTC: Tekton service (cluster default) provisioned + bound": 2 + 1,
        "cluster: Pipeline 'demo-build-pl' added": 1,
        "cluster: Pipeline 'demo-build-pl' edited (a task added)": 1,
        "cluster: Pipeline 'demo-build-pl' deleted": 1,
        "cluster: EventListener 'demo-listener' added": 1,
        "cluster: Route exposes it (its card shows the external URL)": 1,
        "cluster: Pipeline status-only change (expect 0 writes)": 0,
        "OTC: unbind the Tekton service (its cards go)": 2 + 2,
        "OTC: bind it again (its cards are back)": 2 + 2,
        "OTC: delete the Tekton service (its cards go)": 2 + 2,
    }
    dead = proc.stdout.split("dead letters: ")[1].splitlines()[0]
    assert dead.startswith("{'otc-writer.events.dead': 0, 'otc-writer.commands.dead': 0, ")
    assert ": 1" not in dead and "broker-api.tekton.dead': 0" in dead
    assert [int(n) for n in re.findall(r": (\d+)", dead)] == [0] * dead.count(".dead")
    # After each step, the toolchain's tools by kind and name; the run ends with kabanero-otc status.
    steps = step_texts(proc.stdout)
    first = steps["OTC: provision + bind both services"]
    assert "Kabanero Event Trigger (customtool), 2:" in first and "GitHub (githubconsolidated), 4:" in first
    assert first.count("      - kabanero-trigger ") == 2
    # Every service's page URL is printed once its tools are shown in sync (issue 22).
    assert (
        "    page of service demo-events: http://127.0.0.1:" in first
        and "/dashboard/events/demo-events/" in first
    )
    assert "    page of service demo-kabanero: http://127.0.0.1:" in first and "6 tools, all in sync" in first
    assert "toolchain: no tools" in steps["OTC: delete the Kabanero service"]
    tekton = steps["OTC: Tekton service (cluster default) provisioned + bound"]
    assert "Tekton Pipeline (customtool), 2:" in tekton and "Tekton EventListener (customtool), 1:" in tekton
    assert "      - tekton pipeline kabanero nodejs-express-build-pl " in tekton
    assert (
        "listener-b4ef64ab " in tekton
        and "(http://el-listener-b4ef64ab-kabanero.apps.acme.example)" in tekton
    )
    assert "    page of service demo-tekton: http://127.0.0.1:" in tekton
    assert "/dashboard/tekton/demo-tekton/" in tekton
    assert "Tekton Pipelines v0.11.3, Triggers v0.4.0" in tekton
    assert "Tekton Pipeline (customtool), 3:" in steps["cluster: Pipeline 'demo-build-pl' added"]
    assert "demo-listener ff59fbc7  (not exposed)" in steps["cluster: EventListener 'demo-listener' added"]
    exposed = steps["cluster: Route exposes it (its card shows the external URL)"]
    assert "demo-listener ff59fbc7  (https://el-demo-listener-kabanero.apps.acme.example)" in exposed
    assert "toolchain: no tools" in steps["OTC: unbind the Tekton service (its cards go)"]
    assert "toolchain: no tools" in steps["OTC: delete the Tekton service (its cards go)"]
    status = proc.stdout.split("$ kabanero-otc status   (exit 0)")[1]
    assert "SERVICES" in status and "QUEUES" in status and "no problems found" in status


def step_texts(out: str) -> dict[str, str]:
    """What the demo printed after each step ("[n] <step>  (converged ...)" up to the next)."""
    parts = re.split(r"^\[\d+\] (.+?)  \(converged in [^)]*\)$", out.split("\nsummary\n")[0], flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))
