"""The compose check's scenario, against the containers' published ports (scripts/compose-check.sh).

OTC provisions and binds both services through broker-api's published port (HTTP Basic, as OTC
does); a mediation is added to the emulated cluster's EventMediator and removed again through the
Kubernetes emulator's published port; after each step the OTC emulator's tools must match the
cluster and its call log must show exactly one tool write per cluster change. The sample instance is
read from the cluster, not assumed: one trigger tool per mediation, one GitHub tool per repository.

Settings come from the environment: CHECK_BROKER_URL, CHECK_KUBE_URL, CHECK_OTC_URL, BROKER_ID,
BROKER_SECRET, CLUSTER_NAME. Exit 0 when every step held, 1 with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from emulators.otc.platform import BrokerName, OtcPlatform
from scripts.driver import is_tool_write

MEDIATORS = "/apis/events.kabanero.io/v1alpha1/eventmediators"
KABANEROS = "/apis/kabanero.io/v1alpha2/kabaneros"
TRIGGER, GITHUB = "customtool", "githubconsolidated"
STEP_TIMEOUT_S = 90.0
QUIET_S = 3.0  # no OTC call for this long = the services have caught up
ADDED = "compose-check"


class ScenarioError(Exception):
    """A step did not reach the expected OTC state, or wrote more or less than expected."""


@dataclass
class Scenario:
    http: aiohttp.ClientSession
    broker: str
    kube: str
    otc: str
    broker_id: str
    broker_secret: str
    cluster: str
    toolchain: str = ""
    rows: list[tuple[str, float, int]] = field(default_factory=list)

    async def _json(self, method: str, url: str, body: Any = None, content_type: str | None = None) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        data = json.dumps(body) if body is not None else None
        async with self.http.request(method, url, data=data, headers=headers) as reply:
            if reply.status >= 400:
                raise ScenarioError(f"{method} {url}: HTTP {reply.status}: {await reply.text()}")
            return await reply.json()

    async def counts(self) -> tuple[int, int]:
        """(trigger tools, GitHub tools) in the scenario's toolchain."""
        state = await self._json("GET", f"{self.otc}/_emulator/state")
        (chain,) = [t for t in state["toolchains"] if t["id"] == self.toolchain]
        types = [tool["tool_type_id"] for tool in chain["tools"]]
        return types.count(TRIGGER), types.count(GITHUB)

    async def calls(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", f"{self.otc}/_emulator/calls"))["calls"])

    async def tool_writes(self) -> int:
        """OTC writes so far, as the stack driver counts them (``scripts.driver.is_tool_write``)."""
        return sum(is_tool_write(c) for c in await self.calls())

    async def quiet(self) -> None:
        """Wait until the OTC emulator has seen no call for QUIET_S (retries and stragglers landed)."""
        deadline = time.monotonic() + STEP_TIMEOUT_S
        seen, since = len(await self.calls()), time.monotonic()
        while time.monotonic() - since < QUIET_S:
            if time.monotonic() > deadline:
                raise ScenarioError(f"OTC calls did not stop within {STEP_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.5)
            now = len(await self.calls())
            if now != seen:
                seen, since = now, time.monotonic()

    async def step(
        self, what: str, action: Awaitable[None], done: Callable[[int, int], bool], writes: int | None
    ) -> tuple[int, int]:
        """Do ``action``; wait until the tool counts pass ``done`` and OTC is quiet; check the writes."""
        before = await self.tool_writes()
        started = time.monotonic()
        await action
        counts = await self.counts()
        while not done(*counts):
            if time.monotonic() - started > STEP_TIMEOUT_S:
                raise ScenarioError(
                    f"{what}: OTC has {counts} (triggers, GitHub tools) after {STEP_TIMEOUT_S:.0f}s"
                )
            await asyncio.sleep(0.5)
            counts = await self.counts()
        took = time.monotonic() - started
        await self.quiet()
        if not done(*(after := await self.counts())):
            raise ScenarioError(f"{what}: OTC changed again to {after}")
        wrote = await self.tool_writes() - before
        if writes is not None and wrote != writes:
            raise ScenarioError(f"{what}: {wrote} OTC tool writes, expected {writes}")
        self.rows.append((what, took, wrote))
        return after

    async def run(self) -> None:
        mediators = (await self._json("GET", f"{self.kube}{MEDIATORS}"))["items"]
        kabaneros = (await self._json("GET", f"{self.kube}{KABANEROS}"))["items"]
        if not mediators or not kabaneros:
            raise ScenarioError("the emulated cluster holds no EventMediator or no Kabanero (seed?)")
        mediator = mediators[0]
        meta = mediator["metadata"]
        mediator_url = f"{self.kube}/apis/events.kabanero.io/v1alpha1/namespaces/{meta['namespace']}/eventmediators/{meta['name']}"
        mediations = mediator["spec"]["mediations"]
        namespace = kabaneros[0]["metadata"]["namespace"]
        self.toolchain = (
            await self._json("POST", f"{self.otc}/_emulator/toolchains", {"name": "compose-check"})
        )["id"]
        params = {"cluster": self.cluster, "namespace": namespace}
        services: tuple[tuple[BrokerName, str], ...] = (
            ("kabanero-events-broker", "check-events"),
            ("kabanero-broker", "check-kabanero"),
        )

        async with OtcPlatform(self.broker, self.broker_id, self.broker_secret) as platform:

            async def provision_and_bind() -> None:
                for broker, sid in services:
                    reply = await platform.provision(broker, sid, parameters=params)
                    if reply.status not in (200, 201):
                        raise ScenarioError(f"provision {broker}: HTTP {reply.status} {reply.body}")
                    reply = await platform.bind(broker, sid, self.toolchain)
                    if reply.status not in (200, 201, 204):
                        raise ScenarioError(f"bind {broker}: HTTP {reply.status} {reply.body}")

            n = len(mediations)
            _, repos = await self.step(
                f"OTC: provision + bind both services via broker-api ({n} mediations)",
                provision_and_bind(),
                lambda t, g: t == n and g >= 1,
                None,
            )
            if self.rows[-1][2] != n + repos:
                raise ScenarioError(
                    f"provision + bind: {self.rows[-1][2]} OTC tool writes for {n + repos} tools"
                )
            added = {**mediations[0], "name": ADDED, "selector": {"urlPattern": ADDED}}

            async def patch(items: list[dict[str, Any]]) -> None:
                body = {"spec": {"mediations": items}}
                await self._json("PATCH", mediator_url, body, "application/merge-patch+json")

            await self.step(
                f"cluster: mediation '{ADDED}' added",
                patch([*mediations, added]),
                lambda t, g: t == n + 1 and g == repos,
                1,
            )
            await self.step(
                f"cluster: mediation '{ADDED}' removed",
                patch(mediations),
                lambda t, g: t == n and g == repos,
                1,
            )


async def main() -> int:
    env = os.environ
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        scenario = Scenario(
            http,
            broker=env["CHECK_BROKER_URL"],
            kube=env["CHECK_KUBE_URL"],
            otc=env["CHECK_OTC_URL"],
            broker_id=env["BROKER_ID"],
            broker_secret=env["BROKER_SECRET"],
            cluster=env.get("CLUSTER_NAME", "default"),
        )
        try:
            await scenario.run()
        except (ScenarioError, aiohttp.ClientError, OSError) as exc:
            print(f"compose scenario FAILED: {exc}", file=sys.stderr)
            return 1
    print(f"{'step':<66} {'converged':>9} {'OTC writes':>10}")
    for what, took, wrote in scenario.rows:
        print(f"{what:<66} {took:>8.1f}s {wrote:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
