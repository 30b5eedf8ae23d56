"""``kabanero-otc status`` without I/O: rows from what the services and queues answered, the problems
found in them, and how they render (tables and ``--json``). End to end: tests/e2e/test_cli.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from kotc_cli import status, sync, tekton
from kotc_cli.errors import OK, PROBLEM
from kotc_cli.output import Row
from services.otc_writer.ledger import Intent, LedgerEntry


def _ready_watcher() -> Row:
    return status.health_row(
        "kabanero-watcher",
        "http://w:8081",
        (200, {"checks": {"amqp": "ok"}}),
        (200, {"checks": {"lease": "ok: leading"}}),
        {"version": "1.2.3"},
    )


def test_a_replica_that_does_not_answer_is_a_problem_with_the_error() -> None:
    down = status.health_row(
        "otc-writer", "http://w:8082", (0, "ClientConnectorError: refused"), (0, "x"), "x"
    )
    assert (down["reachable"], down["live"], down["ready"], down["version"]) == (False, False, False, None)
    assert list(status.service_problems(down)) == [
        "otc-writer at http://w:8082: ClientConnectorError: refused"
    ]


def test_a_failing_readiness_check_is_named() -> None:
    row = status.health_row(
        "kabanero-watcher",
        "http://w:8081",
        (200, {"checks": {"amqp": "ok"}}),
        (503, {"checks": {"lease": "cannot reach the Kubernetes API"}}),
        {"version": "1"},
    )
    assert row["failing"] == {"lease": "cannot reach the Kubernetes API"}
    assert list(status.service_problems(row)) == [
        "kabanero-watcher at http://w:8081: lease: cannot reach the Kubernetes API"
    ]
    assert list(status.service_problems(_ready_watcher())) == []


def test_queue_rows_add_retrying_and_dead_and_flag_missing_consumers() -> None:
    q = "otc-writer.events"
    exact = {q: (3, 0), f"{q}.retry.5s": (2, 0), f"{q}.retry.60s": (1, 0), f"{q}.dead": (4, 0), "other": None}
    row = status.queue_row(q, exact, {q: {"messages_unacknowledged": 7}})
    assert row == {
        "queue": q,
        "declared": True,
        "ready": 3,
        "unacked": 7,
        "consumers": 0,
        "retrying": 3,
        "dead": 4,
    }
    assert list(status.queue_problems(row)) == [
        f"4 dead letter(s) in {q}.dead (kabanero-otc dead-letters list)",
        f"{q} has no consumer",
    ]
    absent = status.queue_row("other", exact, {})
    assert list(status.queue_problems(absent)) == ["queue other is not declared"]


def _entry(**fields: object) -> LedgerEntry:
    base: dict[str, object] = {"_id": "trigger|tc|k", "purpose": "trigger", "key": "k", "toolchain_id": "tc"}
    return LedgerEntry.model_validate(base | fields)


def test_sync_state_of_a_ledger_entry() -> None:
    assert sync.sync_state(_entry(present=True)) == ("applied", None)
    assert sync.sync_state(_entry(refused_hash="h", last_error="no")) == ("refused", "no")
    assert sync.sync_state(_entry(last_error="502")) == ("failing", "502")
    assert sync.sync_state(_entry(intent=Intent(op="create", name="n"), last_error="502")) == (
        "pending",
        "create in progress or interrupted; last error: 502",
    )
    row = status.tool_row(_entry(pending=Intent(op="create", name="from-intent")))
    assert (row["name"], row["state"]) == ("from-intent", "pending")


def _found() -> dict[str, list[Row]]:
    refused = status.tool_row(_entry(tool_name="t1", refused_hash="h", last_error="name not allowed"))
    return {
        "services": [_ready_watcher()],
        "queues": [status.queue_row("q", {"q": (0, 1), "q.dead": (0, 0)}, {})],
        "kabanero_services": [
            {
                "kind": "kabanero",
                "instance_id": "k1",
                "cluster": "c",
                "namespace": "n",
                "toolchains": [],
                "creates_instance": True,
                "instance_outcome": "refused",
                "instance_message": "quota",
            }
        ],
        "tekton_services": [
            {
                "instance_id": "t1",
                "cluster": "c",
                "namespaces": None,
                "toolchains": ["tc"],
                "writer_toolchains": ["tc"],
                "cards": {"kabanero": 2},
            }
        ],
        "tekton_installations": [tekton.installation_row("c", None, ["t1"], {})],
        "tools": [refused],
    }


def test_problems_in_section_order_and_the_exit_code() -> None:
    found = _found()
    problems = status.problems(found)
    assert problems == [
        "Kabanero service k1: its Kabanero CR was refused: quota",
        "Tekton service(s) t1 of cluster c: no installation report from the cluster's watcher (is "
        "tekton in its WATCH_FAMILIES and its CLUSTER_NAME c?)",
        "OTC refused tool 't1' in tc: name not allowed",
    ]
    report = status.render(found, problems, source="environment", vhost="v")
    assert report.code == PROBLEM
    assert status.render(found, [], source="environment", vhost="v").code == OK


def test_json_keeps_its_keys_and_the_tables_their_titles() -> None:
    found = _found()
    report = status.render(found, status.problems(found), source="run file x", vhost="v")
    data = json.loads(report.render(as_json=True))
    assert set(data) == {
        "source",
        "vhost",
        "services",
        "queues",
        "kabanero_services",
        "tekton_services",
        "tekton_installations",
        "tools",
        "problems",
    }
    assert data["services"][0]["checks"] == {"amqp": "ok", "lease": "ok: leading"}
    text = report.render(as_json=False)
    for title in (
        "SERVICES",
        "QUEUES (vhost v)",
        "KABANERO SERVICES",
        "TEKTON SERVICES",
        "TEKTON INSTALLATIONS (per cluster, as its watcher last reported)",
        "TOOLS OWNED BY KABANERO-OTC",
    ):
        assert f"\n{title}\n" in f"\n{text}"
    assert "2 checks ok; leading" in text and "refused" in text
    assert text.endswith("  - OTC refused tool 't1' in tc: name not allowed")


def test_an_empty_section_says_none_and_no_problems_says_so() -> None:
    found: dict[str, list[Row]] = {s.key: [] for s in status.SECTIONS}
    text = status.render(found, [], source="environment", vhost="/").render(as_json=False)
    assert text.count("  (none)") == len(status.SECTIONS) and text.endswith("no problems found")


def test_tools_show_their_age() -> None:
    row = status.tool_row(_entry(present=True, tool_name="t", updated_at=datetime(2020, 1, 1, tzinfo=UTC)))
    text = status.render(
        {**{s.key: [] for s in status.SECTIONS}, "tools": [row]}, [], source="e", vhost="/"
    ).render(as_json=False)
    (line,) = [line for line in text.splitlines() if " applied " in line]
    assert re.search(r" applied  \d+d  -$", line), line
