"""The Tekton broker at scale (issue 18): 2,000 Pipelines and EventListeners in 100 namespaces.

Runs ``scripts/stack.py``'s processes (as ``bench/stack_scale.py``, MongoDB in memory) driven by
``scripts/driver.py``. Phases, each measured on its own:

1. seed: ``--namespaces`` namespaces with ``--per-namespace`` Pipelines and as many EventListeners
   each, through the Kubernetes API (before any service is bound: nothing is written to OTC);
2. initial sync: one Tekton service for the cluster provisioned and bound to a new toolchain; timed
   from the bind until OTC holds every card (``initial_sync_per_s``: cards/s);
3. changes: ``--changes`` Pipelines get a new task, one at a time, each waited for in OTC; OTC
   writes (``scripts.driver.is_tool_write``) per change (ideal 1.0);
4. resync: every service stopped (SIGTERM) and started again over the unchanged world; seconds from
   the restart until every service is ready and every queue stays empty; OTC writes counted (ideal 0).

    .venv/bin/python -m bench.tekton_scale [--namespaces 100] [--per-namespace 10] [--changes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from bench.stack_scale import MemoryStack, _restart_all
from scripts.driver import (
    LISTENER_CARD,
    PIPELINE_CARD,
    TEKTON_GROUP,
    TRIGGERS_GROUP,
    Driver,
    driving,
    tool_kind,
    wait_for,
)
from scripts.stack import LOGS

TIMEOUT_S = 600.0
QUIET = {"LOG_LEVEL": "WARNING"}


def pipeline(ns: str, name: str, task: str) -> dict[str, Any]:
    return {
        "apiVersion": "tekton.dev/v1beta1",
        "kind": "Pipeline",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"tasks": [{"name": task, "taskRef": {"name": task}}]},
    }


def listener(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "triggers.tekton.dev/v1alpha1",
        "kind": "EventListener",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "serviceAccountName": "event-listener",
            "triggers": [
                {
                    "name": f"{name}-push",
                    "bindings": [{"apiversion": "v1alpha1", "name": "push-binding"}],
                    "template": {"apiversion": "v1alpha1", "name": "build-template"},
                }
            ],
        },
    }


def cards(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in tools if tool_kind(t) in (PIPELINE_CARD, LISTENER_CARD)]


async def seed(w: Driver, namespaces: list[str], per_namespace: int) -> None:
    """Namespaces, then their Pipelines and EventListeners (64 requests in flight at most)."""
    gate = asyncio.Semaphore(64)

    async def post(path: str, body: dict[str, Any]) -> None:
        async with gate:
            await w.kube("POST", path, body)

    await asyncio.gather(*(post("/api/v1/namespaces", {"metadata": {"name": ns}}) for ns in namespaces))
    await asyncio.gather(
        *(
            post(f"{TEKTON_GROUP}/namespaces/{ns}/pipelines", pipeline(ns, f"pl-{i}", "build"))
            for ns in namespaces
            for i in range(per_namespace)
        ),
        *(
            post(f"{TRIGGERS_GROUP}/namespaces/{ns}/eventlisteners", listener(ns, f"el-{i}"))
            for ns in namespaces
            for i in range(per_namespace)
        ),
    )


async def run(namespaces: int, per_namespace: int, changes: int) -> dict[str, Any]:
    stack = MemoryStack(
        f"kotc-bench-tekton-{uuid.uuid4().hex[:8]}",
        logs=LOGS / "bench-tekton-scale",
        extra_env={
            "otc-writer": {"OTC_RATE_LIMIT": "100000", "OTC_MAX_CONCURRENCY": "32", **QUIET},
            "kabanero-watcher": {"SNAPSHOT_INTERVAL_S": "3600", **QUIET},
            "broker-api": QUIET,
            "github-linker": QUIET,
        },
    )
    out: dict[str, Any] = {"namespaces": namespaces, "objects": 2 * namespaces * per_namespace}
    names = [f"tk-{n:03d}" for n in range(namespaces)]
    try:
        async with driving(stack, toolchain="bench-tekton") as w:
            t0 = time.monotonic()
            await seed(w, names, per_namespace)
            out["seed_seconds"] = round(time.monotonic() - t0, 2)
            await stack.quiet(timeout=TIMEOUT_S)
            # and deploy/samples/tekton-sample.yaml's 2 Pipelines and 1 EventListener
            total = 2 * namespaces * per_namespace + 3

            # 2. Initial sync: from the bind until every card is in OTC.
            mark = await w.mark()
            t0 = time.monotonic()
            await w.provision_and_bind("tekton-broker", "bench-tekton", {"cluster": "default"})
            created = 0

            async def synced() -> bool:  # the call log is cheap; the full state only once it adds up
                nonlocal created, mark
                mark, writes = await w.calls(mark)
                created += sum(c["method"] == "POST" for c in writes)
                return created >= total and len(cards(await w.tools())) >= total

            await wait_for(synced, f"{total} cards", timeout=TIMEOUT_S, interval=0.5)
            took = time.monotonic() - t0
            out["initial_sync_seconds"] = round(took, 2)
            out["initial_sync_per_s"] = round(total / took, 1)
            await stack.quiet(timeout=TIMEOUT_S)
            out["cards"] = len(cards(await w.tools()))

            # 3. One Pipeline edited at a time, each waited for in OTC.
            mark = await w.mark()
            for i in range(changes):
                ns, task = names[i % namespaces], f"task-{uuid.uuid4().hex[:8]}"
                body = {"spec": {"tasks": [{"name": task, "taskRef": {"name": task}}]}}
                await w.kube("PATCH", f"{TEKTON_GROUP}/namespaces/{ns}/pipelines/pl-0", body)

                async def shown(ns: str = ns, task: str = task) -> bool:
                    return any(
                        t["parameters"]["name"] == f"default/{ns}/pl-0"
                        and task in t["parameters"]["additional-properties"]
                        for t in cards(await w.tools())
                    )

                await wait_for(shown, f"{ns}/pl-0 edited", timeout=60, interval=0.1)
            await stack.quiet(timeout=TIMEOUT_S)
            out["changes"] = changes
            out["writes_per_change"] = round(await w.writes_since(mark) / changes, 3)

            # 4. Every service restarted over the unchanged world.
            mark = await w.mark()
            t0 = time.monotonic()
            out["resync_ready_seconds_by_service"] = await _restart_all(stack)
            calm = await stack.quiet(timeout=TIMEOUT_S, stable_polls=5)
            out["resync_seconds"] = round(calm - t0, 2)
            out["resync_writes"] = await w.writes_since(mark)
            tools = cards(await w.tools())
            names_seen = [t["parameters"]["name"] for t in tools]
            dead = {q: n for q, n in (await w.dead_letter_counts()).items() if n}
            out["invariants"] = {
                "cards": len(tools),
                "duplicates": len(names_seen) - len(set(names_seen)),
                "dead_letters": dead,
                "hold": len(tools) == total and len(set(names_seen)) == total and not dead,
            }
            stack.check_alive()
    except Exception as exc:  # the phases measured so far still reach results.json
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--per-namespace", type=int, default=10, help="Pipelines, and as many EventListeners")
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.namespaces, args.per_namespace, args.changes))))


if __name__ == "__main__":
    main()
