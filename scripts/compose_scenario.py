"""The compose check's scenario, against the containers' published ports (scripts/compose-check.sh).

OTC provisions and binds both services through broker-api's published port (HTTP Basic, as OTC
does); a mediation is added to the emulated cluster's EventMediator and removed again through the
Kubernetes emulator's published port; after each step the OTC emulator's tools must match the
cluster and its call log must show exactly one tool write per cluster change. The sample instance is
read from the cluster, not assumed: one trigger tool per mediation, one GitHub tool per repository.

CHECK_SCENARIO=tekton runs the tekton profile's scenario instead (the Tekton install on its own):
the cluster serves no Kabanero CRD, broker-api serves only ``tekton-broker``; OTC provisions and
binds a Tekton service, the seeded Pipelines and EventListeners appear as cards (one write each),
and one Pipeline change is one write.

Settings come from the environment: CHECK_BROKER_URL, CHECK_KUBE_URL, CHECK_OTC_URL, BROKER_ID,
BROKER_SECRET, CLUSTER_NAME, CHECK_SCENARIO (``kabanero``, the default, or ``tekton``). Exit 0 when
every step held, 1 with the reason otherwise.
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
PIPELINES = "/apis/tekton.dev/v1beta1/pipelines"
EVENTLISTENERS = "/apis/triggers.tekton.dev/v1alpha1/eventlisteners"


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

    async def tools_mention(self, text: str) -> bool:
        state = await self._json("GET", f"{self.otc}/_emulator/state")
        (chain,) = [t for t in state["toolchains"] if t["id"] == self.toolchain]
        return any(text in json.dumps(tool) for tool in chain["tools"])

    async def broker_call(self, method: str, broker: str, path: str, body: dict[str, Any]) -> int:
        """One call of OTC's side of the broker contract (HTTP Basic); its status."""
        headers = {"Authorization": aiohttp.encode_basic_auth(self.broker_id, self.broker_secret)}
        url = f"{self.broker}/{broker}/api/v1{path}"
        async with self.http.request(method, url, json=body, headers=headers) as reply:
            return reply.status

    async def run_tekton(self) -> None:
        """The tekton profile: a Tekton-only cluster, broker-api serving only the Tekton broker."""
        async with self.http.get(f"{self.kube}{KABANEROS}") as reply:
            if reply.status != 404:
                raise ScenarioError(f"the Tekton-only cluster serves the Kabanero CRDs (HTTP {reply.status})")
        pipelines = (await self._json("GET", f"{self.kube}{PIPELINES}"))["items"]
        listeners = (await self._json("GET", f"{self.kube}{EVENTLISTENERS}"))["items"]
        if not pipelines:
            raise ScenarioError("the emulated cluster holds no Pipeline (seed?)")
        n = len(pipelines) + len(listeners)
        self.toolchain = (
            await self._json("POST", f"{self.otc}/_emulator/toolchains", {"name": "compose-check-tekton"})
        )["id"]
        provision = {
            "service_id": "tekton",
            "organization_guid": "compose-check",
            "parameters": {"cluster": self.cluster},
            "service_credentials": "compose-check-service-credentials",
        }
        status = await self.broker_call("PUT", "kabanero-broker", "/service_instances/check-k", provision)
        if status != 404:
            raise ScenarioError(f"BROKERS=tekton-broker, yet kabanero-broker answered HTTP {status}")

        async def provision_and_bind() -> None:
            status = await self.broker_call(
                "PUT", "tekton-broker", "/service_instances/check-tekton", provision
            )
            if status not in (200, 201):
                raise ScenarioError(f"provision tekton-broker: HTTP {status}")
            path = f"/service_instances/check-tekton/toolchains/{self.toolchain}"
            status = await self.broker_call("PUT", "tekton-broker", path, {"toolchain_credentials": "tc"})
            if status not in (200, 201, 204):
                raise ScenarioError(f"bind tekton-broker: HTTP {status}")

        await self.step(
            f"OTC: provision + bind a Tekton service ({n} cards)",
            provision_and_bind(),
            lambda cards, github: cards == n and github == 0,
            n,
        )
        meta = pipelines[-1]["metadata"]
        tasks = [*pipelines[-1]["spec"]["tasks"], {"name": ADDED, "taskRef": {"name": ADDED}}]
        url = f"{self.kube}/apis/tekton.dev/v1beta1/namespaces/{meta['namespace']}/pipelines/{meta['name']}"

        async def change_pipeline() -> None:
            """Patch the Pipeline, then wait until its card shows the new task (the count stays)."""
            await self._json("PATCH", url, {"spec": {"tasks": tasks}}, "application/merge-patch+json")
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while not await self.tools_mention(ADDED):
                if time.monotonic() > deadline:
                    raise ScenarioError(f"no OTC card shows task '{ADDED}' after {STEP_TIMEOUT_S:.0f}s")
                await asyncio.sleep(0.5)

        await self.step(
            f"cluster: Pipeline {meta['name']} gets a task",
            change_pipeline(),
            lambda cards, github: cards == n and github == 0,
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
            await (scenario.run_tekton() if env.get("CHECK_SCENARIO") == "tekton" else scenario.run())
        except (ScenarioError, aiohttp.ClientError, OSError) as exc:
            print(f"compose scenario FAILED: {exc}", file=sys.stderr)
            return 1
    print(f"{'step':<66} {'converged':>9} {'OTC writes':>10}")
    for what, took, wrote in scenario.rows:
        print(f"{what:<66} {took:>8.1f}s {wrote:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
