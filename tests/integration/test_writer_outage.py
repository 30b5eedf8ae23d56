"""otc-writer while OTC or IAM is down: nothing dead-letters, nothing is lost, OTC converges at once."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import pytest

from services.otc_writer.app import COMMANDS_QUEUE, EVENTS_QUEUE, Deps, OtcWriter
from services.otc_writer.desired import trigger_tool_name
from tests.helpers import drain_queue, wait_until
from tests.integration.writer_support import (
    FAST,
    WriterEnv,
    command,
    service_event,
    snapshot_event,
    trigger,
    trigger_event,
    writes,
)


async def _ready(port: int, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.json()


def _spent(w: OtcWriter) -> float:
    """Attempts the consumers spent on both queues: messages retried or dead-lettered."""
    outcomes = w.infra.consumer_metrics.outcomes
    return float(
        sum(
            outcomes.labels(q, o)._value.get()
            for q in (EVENTS_QUEUE, COMMANDS_QUEUE)
            for o in ("retry", "dead")
        )
    )


def _held(w: OtcWriter, queue: str) -> float | None:
    return w.infra.health.registry.get_sample_value("kotc_consumer_held", {"queue": queue})


async def test_otc_down_longer_than_all_attempts_dead_letters_nothing(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="outage")
    first = [trigger(f"t{i}") for i in range(3)]
    # A long reset: only the probe can close the circuit, so the test shows the probe resumes work.
    async with env.writer(Deps(topology=FAST, max_attempts=3), otc_breaker_reset_s=600) as w:
        await env.publish(
            snapshot_event(first, revision=1),
            service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc),
        )
        await env.wait_handled(w, 2)
        env.otc.set_faults(error_rate=1.0)  # OTC answers nothing but 503
        later = [trigger(f"t{i}", revision=2) for i in range(3, 9)]
        for t in later:
            await env.publish(trigger_event(t))
        for i in range(4):
            await env.publish(command("apply", key=f"r{i}", toolchain_id=tc, revision=1))
        # 3 attempts at 1 s delays would have dead-lettered everything within ~5 s.
        await wait_until(
            lambda: all(c.outage == "otc" for c in w.consumers), timeout=30, what="both consumers holding"
        )
        await wait_until(
            lambda: (_held(w, EVENTS_QUEUE), _held(w, COMMANDS_QUEUE)) == (len(later), 4),
            timeout=10,
            what="every message in hand",
        )
        # The barrier is the consumers' own clock: three failed probes each (0.5 + 0.75 + 1.1 s) outlast
        # the two 1 s retry delays of three attempts. No attempt was spent, so none can run out.
        probed = w.client.probes
        await wait_until(lambda: w.client.probes >= probed + 6, timeout=30, what="three failed probes each")
        assert _spent(w) == 0
        status, body = await _ready(w.http_port)
        assert status == 503 and "open" in str(body["checks"])
        assert (await _ready(w.http_port, "/healthz"))[0] == 200  # alive: waiting is its job now
        for queue in (EVENTS_QUEUE, COMMANDS_QUEUE):
            assert await drain_queue(env.amqp_url, f"{queue}.dead", timeout=0.2) == []
        env.otc.clear_faults()
        loop = asyncio.get_running_loop()
        back = loop.time()
        await wait_until(lambda: len(env.otc.tools(tc)) == 9 + 4, timeout=10, what="OTC converged")
        converged = loop.time() - back
        await env.wait_handled(w, 2 + len(later))
        await env.wait_handled(w, 4, COMMANDS_QUEUE)
        assert _spent(w) == 0  # the whole outage long
    assert converged < 10
    expected = sorted(
        [trigger_tool_name(t.key) for t in first + later] + [f"kabanero-repo r{i}" for i in range(4)]
    )
    assert env.tool_names(tc) == expected  # exactly one each: no duplicates
    assert len([c for c in writes(env.otc.calls()) if c.method == "POST"]) == 13
    for queue in (EVENTS_QUEUE, COMMANDS_QUEUE):
        assert await drain_queue(env.amqp_url, f"{queue}.dead", timeout=0.2) == []


async def test_iam_rejecting_the_key_makes_the_writer_unready_and_dead_letters_nothing(
    env: WriterEnv, caplog: pytest.LogCaptureFixture
) -> None:
    tc = env.otc.seed_toolchain(name="badkey")
    async with env.writer(otc_api_key="a-key-iam-does-not-know") as w:
        await wait_until(lambda: w.iam.rejected is not None, timeout=10, what="IAM's verdict")
        status, body = await _ready(w.http_port)
        assert status == 503
        assert str(body["checks"]["iam"]).startswith("failing")
        assert "a-key-iam-does-not-know" not in str(body)
        await env.publish(command("apply", key="k1", toolchain_id=tc, revision=1))
        await wait_until(lambda: w.consumers[1].outage == "iam", timeout=10, what="commands held")
        # The barrier: two more failed probes of the holding consumer (1.25 s, past a 1 s retry delay).
        probed = w.client.probes
        await wait_until(lambda: w.client.probes >= probed + 2, timeout=30, what="two failed probes")
        assert _held(w, COMMANDS_QUEUE) == 1 and _spent(w) == 0
        assert await drain_queue(env.amqp_url, f"{COMMANDS_QUEUE}.dead", timeout=0.2) == []
    assert env.otc.tools(tc) == []
    # Stopping while messages are held closes every part within the deadline (held messages do no
    # work, so the consumer does not wait for them; they go back unacked).
    late = [
        r.getMessage()
        for r in caplog.records
        if "did not close within the shutdown deadline" in r.getMessage()
    ]
    assert late == []


async def test_a_backlog_of_many_changes_to_few_triggers_costs_one_write_per_tool_after_the_outage(
    env: WriterEnv,
) -> None:
    """Coalescing: trigger events carry the whole trigger, so of the changes held during an outage
    only the latest per trigger is applied (old code: one OTC write per change and toolchain)."""
    tcs = [env.otc.seed_toolchain(name=f"coalesce-{i}") for i in range(2)]
    names = [f"c{i}" for i in range(3)]
    async with env.writer(Deps(topology=FAST, max_attempts=3), otc_breaker_reset_s=600) as w:
        await env.publish(
            snapshot_event([trigger(n) for n in names], revision=1),
            *[
                service_event("bound", revision=i + 1, toolchains=tcs[: i + 1], toolchain_id=tc)
                for i, tc in enumerate(tcs)
            ],
        )
        await wait_until(lambda: all(len(env.otc.tools(tc)) == 3 for tc in tcs), timeout=20, what="baseline")
        env.otc.set_faults(error_rate=1.0)
        revisions = range(2, 32)
        for r in revisions:
            for n in names:
                await env.publish(trigger_event(trigger(n, revision=r, body=f"v{r}"), "updated"))
        last = revisions[-1]  # a snapshot in its own lane (the instance's), with the same latest state
        await env.publish(
            snapshot_event([trigger(n, revision=last, body=f"v{last}") for n in names], revision=2)
        )
        sent = len(tcs) + 1 + len(revisions) * len(names) + 1
        await wait_until(lambda: w.consumers[0].outage == "otc", timeout=30, what="events held")
        superseded = w.infra.consumer_metrics.outcomes.labels(EVENTS_QUEUE, "superseded")
        # While held, the consumer keeps receiving and acks what is superseded: about one per trigger
        # stays (the prefetch window would otherwise be full and the rest still queued).
        await wait_until(
            lambda: superseded._value.get() >= len(names) * (len(revisions) - 2),
            timeout=30,
            what="the backlog coalesced while held",
        )
        before = len(writes(env.otc.calls()))
        env.otc.clear_faults()
        final = hashlib.sha256(f"v{revisions[-1]}".encode()).hexdigest()

        def converged() -> bool:
            tools = [t for tc in tcs for t in env.otc.tools(tc)]
            return len(tools) == 6 and all(final in str(t.parameters) for t in tools)

        await wait_until(converged, timeout=20, what="OTC at the latest revision")

        def settled() -> bool:  # every message acked or superseded: no write can still come
            outcomes = w.infra.consumer_metrics.outcomes
            return bool(
                sum(outcomes.labels(EVENTS_QUEUE, o)._value.get() for o in ("ack", "superseded")) >= sent
            )

        await wait_until(settled, timeout=20, what="the backlog settled")
        after = writes(env.otc.calls())[before:]
    assert len(after) == len(names) * len(tcs), [(c.method, c.path) for c in after]
    assert {c.method for c in after} == {"PATCH"}
    for tc in tcs:
        assert env.tool_names(tc) == sorted(trigger_tool_name(trigger(n).key) for n in names)
    for queue in (EVENTS_QUEUE, COMMANDS_QUEUE):
        assert await drain_queue(env.amqp_url, f"{queue}.dead", timeout=0.2) == []
