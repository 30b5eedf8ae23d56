"""docs/messages.md is generated from the models and the topology; it must be current."""

from __future__ import annotations

import subprocess
import sys

from scripts.messages_doc import DOC, consumers, matches, render, routing_keys
from shared.amqp.topology import QUEUES


def test_messages_doc_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.messages_doc", "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert DOC.read_text() == render()


def test_every_routing_key_reaches_a_consumer_and_every_binding_is_documented() -> None:
    keys = routing_keys()
    assert all(consumers(k) for k in keys)
    undocumented = [
        p for patterns in QUEUES.values() for p in patterns if not any(matches(k, p) for k in keys)
    ]
    assert undocumented == []
