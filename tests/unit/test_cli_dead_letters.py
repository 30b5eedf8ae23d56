"""``kabanero-otc dead-letters`` without I/O: which queues, and how a dead letter is described from our
headers, else the broker's ``x-death``, else its body. End to end (list, replay, purge on real
queues): tests/e2e/test_cli.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kotc_cli import config as configuration
from kotc_cli import dead_letters
from kotc_cli.errors import CliError
from shared.amqp.consumer import ATTEMPT_HEADER, ERROR_HEADER, REASON_HEADER


def _config(tmp_path: Path) -> configuration.Config:
    return configuration.load(use_run_file=False, overrides={"CLUSTER_NAME": "c1"}, cwd=tmp_path)


def test_dead_queues_every_consuming_queue_or_one(tmp_path: Path) -> None:
    config = _config(tmp_path)
    every = dead_letters.dead_queues(config, None)
    assert "otc-writer.events.dead" in every and "kabanero-watcher.c1.instances.dead" in every
    assert all(q.endswith(".dead") for q in every)
    assert dead_letters.dead_queues(config, "github-linker.events.dead") == ["github-linker.events.dead"]
    with pytest.raises(CliError, match="not a consuming queue"):
        dead_letters.dead_queues(config, "nope")


def test_our_headers_describe_a_dead_letter() -> None:
    when = datetime(2026, 1, 1, 12, tzinfo=UTC)
    body = json.dumps({"id": "e1", "type": "io.kabanero.otc.x", "subject": "ns/name"}).encode()
    row = dead_letters.letter(
        "q.dead",
        headers={
            REASON_HEADER: b"permanent error",
            ERROR_HEADER: "403",
            ATTEMPT_HEADER: 1,
            "x-kotc-replayed": 2,
        },
        body=body,
        message_id=None,
        type_=None,
        timestamp=when,
    )
    assert {
        k: row[k] for k in ("id", "type", "subject", "reason", "error", "attempts", "replayed", "time")
    } == {
        "id": "e1",
        "type": "io.kabanero.otc.x",
        "subject": "ns/name",
        "reason": "permanent error",
        "error": "403",
        "attempts": 1,
        "replayed": 2,
        "time": "2026-01-01T12:00:00+00:00",
    }


def test_the_brokers_x_death_when_ours_are_missing_and_a_body_that_is_not_json() -> None:
    row = dead_letters.letter(
        "q.dead",
        headers={"x-death": [{"reason": "expired", "count": 4}]},
        body=b"not a CloudEvent",
        message_id="junk-1",
        type_=None,
        timestamp=None,
    )
    assert (row["id"], row["subject"], row["reason"], row["attempts"], row["replayed"], row["age"]) == (
        "junk-1",
        None,
        "broker: expired",
        4,
        0,
        "-",
    )
    bare = dead_letters.letter("q.dead", headers={}, body=b"[1]", message_id=None, type_=None, timestamp=None)
    assert (bare["id"], bare["reason"], bare["attempts"]) == (None, None, None)
