"""Documents of ``n`` applied trigger tools in other instances, laid out as otc-writer stores them."""

from __future__ import annotations

import hashlib
from typing import Any

from shared.events import InstanceRef, TriggerData, TriggerKey

TRIGGERS = "otc_writer_triggers"
LEDGER = "otc_writer_ledger"


def seed_documents(n: int) -> dict[str, list[dict[str, Any]]]:
    triggers, entries = [], []
    for i in range(n):
        ns = f"seed{i // 100}"
        scope = f"default/{ns}"
        body = f"seed-{i}"
        t = TriggerData(
            key=TriggerKey(cluster="default", namespace=ns, generation="mediation", owner="m", name=f"s{i}"),
            instance=InstanceRef(cluster="default", namespace=ns),
            content={"body": body},
            content_hash=hashlib.sha256(body.encode()).hexdigest(),
            revision=1,
        )
        triggers.append(
            {
                "_id": t.key.id,
                "scope": scope,
                "deleted": False,
                "data": t.model_dump(mode="json"),
                "revision": 1,
                "schema_version": 1,
            }
        )
        entries.append(
            {
                "_id": f"trigger|tc-seed|{t.key.id}",
                "purpose": "trigger",
                "key": t.key.id,
                "toolchain_id": "tc-seed",
                "scope": scope,
                "present": True,
                "revision": 1,
                "tool_id": f"tool-{i}",
                "tool_name": f"seed {i}",
                "tool_type_id": "customtool",
                "parameters": {"name": f"seed {i}", "description": "x" * 200},
                "content_hash": "0" * 64,
                "pending": None,
                "lease_owner": None,
                "lease_until": None,
                "schema_version": 1,
            }
        )
    return {TRIGGERS: triggers, LEDGER: entries} if n else {}
