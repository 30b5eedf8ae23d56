"""``make demo`` (``python -m scripts.stack demo``): the stack of ``scripts/stack.py``, driven by the
stack driver (``scripts/driver.py``) through a full scenario: OTC provisions and binds the Kabanero,
Kabanero Events and Tekton services through broker-api, the cluster changes, OTC follows. After each
step it prints the toolchain's tools by kind and name; at the end a summary with the OTC writes of
each step (one per cluster change, none for a status-only change), the dead letters (none) and
``kabanero-otc status``. Exit 0, or 1 when a step or a check failed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from scripts.driver import (
    BROKERS,
    EVENTS_TOOL,
    GITHUB,
    LISTENER_CARD,
    PIPELINE_CARD,
    ROUTES_GROUP,
    TEKTON_GROUP,
    TRIGGER,
    TRIGGERS_GROUP,
    Driver,
    DriverError,
    count,
    driving,
    tool_kind,
    wait_for,
)
from scripts.stack import CLUSTER, LOGS, ROOT, Stack

PIPELINES = f"{TEKTON_GROUP}/namespaces/kabanero/pipelines"
LISTENERS = f"{TRIGGERS_GROUP}/namespaces/kabanero/eventlisteners"
ROUTES = f"{ROUTES_GROUP}/namespaces/kabanero/routes"
SAMPLE_PIPELINE = "nodejs-express-build-pl"  # deploy/samples/tekton-sample.yaml
Check = Callable[[list[dict[str, Any]]], bool]


def counts(trig: int, gh: int | None, *, events: int = 0, pipelines: int = 0, listeners: int = 0) -> Check:
    """The toolchain holds exactly these tools by kind (``gh=None``: at least one GitHub tool)."""

    def check(tools: list[dict[str, Any]]) -> bool:
        n_gh = count(tools, GITHUB)
        return (
            count(tools, TRIGGER) == trig
            and (n_gh >= 1 if gh is None else n_gh == gh)
            and count(tools, EVENTS_TOOL) == events
            and count(tools, PIPELINE_CARD) == pipelines
            and count(tools, LISTENER_CARD) == listeners
        )

    return check


class Demo:
    """The scenario: OTC provisions and binds the services, the cluster changes, OTC follows."""

    def __init__(self, driver: Driver, *, echo: Callable[[str], None] | None = None) -> None:
        """``echo``: where to print each step with the toolchain's tools as it completes."""
        self.driver = driver
        self.rows: list[tuple[str, str, str]] = []
        self.echo = echo

    async def settle(self, what: str, action: Awaitable[Any], check: Check) -> list[dict[str, Any]]:
        """Do ``action``, wait until OTC's tools pass ``check``, record the time and the OTC writes."""
        d = self.driver
        mark = await d.mark()
        await action

        async def ok() -> bool:
            d.stack.check_alive()
            return check(await d.tools())

        took = await wait_for(ok, what)
        await d.quiet()  # retries and stragglers land before the write count below
        tools = await d.tools()
        if not check(tools):
            raise DriverError(f"state changed again after: {what}")
        self.rows.append((what, f"{took:.1f}s", str(await d.writes_since(mark))))
        if self.echo is not None:
            self.echo(tools_by_kind(len(self.rows), self.rows[-1], tools))
        return tools

    async def run(self) -> None:
        d = self.driver
        d.toolchain = await d.new_toolchain("demo-toolchain")
        params = {"cluster": CLUSTER, "namespace": "kabanero"}
        pages: dict[str, str] = {}

        async def provision_and_bind() -> None:
            for broker, sid in BROKERS:
                pages[sid] = (await d.provision_and_bind(broker, sid, params)).body["dashboard_url"]

        # deploy/samples/kabanero-sample.yaml yields 2 triggers and 4 repositories (its header).
        await self.settle("OTC: provision + bind both services", provision_and_bind(), counts(2, 4))
        for sid, url in pages.items():
            await self.show_page(sid, url, 6)
        gh = count(await d.tools(), GITHUB)
        current = (await d.kube("GET", "mediator"))["spec"]["mediations"]
        release = {**current[0], "name": "release", "selector": {"urlPattern": "release"}}
        await self.settle(
            "cluster: mediation 'release' added",
            d.kube("PATCH", "mediator", {"spec": {"mediations": [*current, release]}}),
            counts(3, gh),
        )
        kept = [m for m in current if m["name"] != "gitops"] + [release]
        await self.settle(
            "cluster: mediation 'gitops' removed",
            d.kube("PATCH", "mediator", {"spec": {"mediations": kept}}),
            counts(2, gh),
        )
        await self.settle(
            "cluster: status-only change (expect 0 writes)",
            d.kube("PATCH", "mediator", {"status": {"summary": [{"operation": "noop"}]}}),
            counts(2, gh),
        )
        await self.settle(
            "OTC: unbind the Kabanero Events service",
            d.unbind("kabanero-events-broker", "demo-events"),
            counts(0, gh),
        )
        await self.settle(
            "OTC: delete the Kabanero service",
            d.deprovision("kabanero-broker", "demo-kabanero"),
            counts(0, 0),
        )
        await self.auto_events()
        await self.create_instance()
        await self.tekton()

    async def auto_events(self) -> None:
        """``parameters.events: auto``: binding adds a Kabanero Events tool, unbinding removes it."""
        d, sid = self.driver, "demo-kabanero-auto"
        params = {"cluster": CLUSTER, "namespace": "kabanero", "events": "auto"}
        page: list[str] = []

        async def bound() -> None:
            page.append((await d.provision_and_bind("kabanero-broker", sid, params)).body["dashboard_url"])

        await self.settle(
            "OTC: events=auto Kabanero service bound (+Events tool, 2 trig.)", bound(), counts(2, 4, events=1)
        )
        await self.show_page(sid, page[0], 7)
        await self.settle(
            "OTC: unbind it (its Events tool and all it brought go)",
            d.unbind("kabanero-broker", sid),
            counts(0, 0),
        )

    async def create_instance(self) -> None:
        """``parameters.create: true``: the watcher creates the Kabanero CR (owned, marked); its stack
        hub reaches OTC as a GitHub tool; deprovisioning deletes the CR and the tool goes."""
        d, sid = self.driver, "demo-kabanero-create"
        hub = "https://github.com/demo-org/demo-stacks/releases/download/0.9.0/kabanero-index.yaml"
        spec = {"version": "0.9.2", "stacks": {"repositories": [{"name": "demo", "https": {"url": hub}}]}}
        params = {"cluster": CLUSTER, "namespace": "team-demo", "create": True, "instance": spec}
        cr = "/apis/kabanero.io/v1alpha2/namespaces/team-demo/kabaneros/kabanero"
        dashboard: list[str] = []

        async def create_and_bind() -> None:
            reply = await d.provision_and_bind("kabanero-broker", sid, params)
            dashboard.append(reply.body["dashboard_url"])

        await self.settle(
            "OTC: create=true service: CR created, its stack hub linked", create_and_bind(), counts(0, 1)
        )
        await d.kube("GET", cr)  # the Kabanero CR the service created (DriverError if it is not there)
        outcome = await self.page(dashboard[0], lambda page: _outcome(page).startswith("created"))
        if self.echo is not None:
            self.echo(f"    page of service {sid}: {dashboard[0]}\n      {_outcome(outcome)}")
        await self.settle(
            "OTC: delete it (its CR is deleted, the GitHub tool goes)",
            d.deprovision("kabanero-broker", sid),
            counts(0, 0),
        )
        await wait_for(lambda: self.absent(cr), "the created CR deleted")

    async def tekton(self) -> None:
        """The Tekton broker: one read-only card per Pipeline and EventListener of the cluster
        (deploy/samples/tekton-sample.yaml: 2 Pipelines, EventListener listener-b4ef64ab exposed
        by a Route), following the cluster with one write per change."""
        d, sid = self.driver, "demo-tekton"
        page: list[str] = []

        async def provision_and_bind() -> None:
            reply = await d.provision_and_bind("tekton-broker", sid, {"cluster": CLUSTER})
            page.append(reply.body["dashboard_url"])

        await self.settle(
            "OTC: Tekton service (cluster default) provisioned + bound",
            provision_and_bind(),
            counts(0, 0, pipelines=2, listeners=1),
        )
        shown = await self.page(page[0], lambda p: "has not reported" not in p["summary"])
        if self.echo is not None:
            self.echo(f"    page of service {sid}: {page[0]}\n      {shown['summary']}")
        sample = await d.kube("GET", f"{PIPELINES}/{SAMPLE_PIPELINE}")
        added = {
            "apiVersion": "tekton.dev/v1beta1",
            "kind": "Pipeline",
            "spec": copy.deepcopy(sample["spec"]),
        }
        added["metadata"] = {"name": "demo-build-pl", "namespace": "kabanero"}
        await self.settle(
            "cluster: Pipeline 'demo-build-pl' added",
            d.kube("POST", PIPELINES, added),
            counts(0, 0, pipelines=3, listeners=1),
        )
        tasks = [*added["spec"]["tasks"], {"name": "demo-test-task", "taskRef": {"name": "demo-test"}}]
        await self.settle(
            "cluster: Pipeline 'demo-build-pl' edited (a task added)",
            d.kube("PATCH", f"{PIPELINES}/demo-build-pl", {"spec": {"tasks": tasks}}),
            _card_shows(counts(0, 0, pipelines=3, listeners=1), "demo-build-pl", "demo-test-task"),
        )
        await self.settle(
            "cluster: Pipeline 'demo-build-pl' deleted",
            d.kube("DELETE", f"{PIPELINES}/demo-build-pl"),
            counts(0, 0, pipelines=2, listeners=1),
        )
        await self.settle(
            "cluster: EventListener 'demo-listener' added",
            d.kube("POST", LISTENERS, _listener("demo-listener")),
            counts(0, 0, pipelines=2, listeners=2),
        )
        url = "https://el-demo-listener-kabanero.apps.acme.example"
        await self.settle(
            "cluster: Route exposes it (its card shows the external URL)",
            d.kube("POST", ROUTES, _route("el-demo-listener", url)),
            _card_shows(counts(0, 0, pipelines=2, listeners=2), "demo-listener", url),
        )
        await self.settle(
            "cluster: Pipeline status-only change (expect 0 writes)",
            d.kube_status(f"{PIPELINES}/{SAMPLE_PIPELINE}", {"demo": "status only"}),
            counts(0, 0, pipelines=2, listeners=2),
        )
        await self.settle(
            "OTC: unbind the Tekton service (its cards go)",
            d.unbind("tekton-broker", sid),
            counts(0, 0),
        )
        await self.settle(
            "OTC: bind it again (its cards are back)",
            d.bind("tekton-broker", sid),
            counts(0, 0, pipelines=2, listeners=2),
        )
        await self.settle(
            "OTC: delete the Tekton service (its cards go)",
            d.deprovision("tekton-broker", sid),
            counts(0, 0),
        )

    async def page(self, url: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """A service's page (its ``dashboard_url``, JSON) once ``ready`` holds for what it shows."""
        shown: dict[str, Any] = {}

        async def check() -> bool:
            async with self.driver.http.get(url, headers={"Accept": "application/json"}) as r:
                shown.update(await r.json() if r.status == 200 else {})
            return bool(shown) and ready(shown)

        await wait_for(check, f"the service page {url}")
        return shown

    async def show_page(self, sid: str, url: str, tools: int) -> None:
        """Print the service's page URL (its ``dashboard_url``) once it shows its ``tools`` in sync."""
        shown = await self.page(url, lambda p: p["tools"]["in_sync"] and p["tools"]["total"] == tools)
        if self.echo is not None:
            self.echo(f"    page of service {sid}: {url}\n      {shown['tools']['total']} tools, all in sync")

    async def absent(self, path: str) -> bool:
        return (await self.driver.get(self.driver.kube_url(path)))[0] == 404


def _outcome(page: dict[str, Any]) -> str:
    shown = page.get("outcome")
    return f"{shown['outcome']}: {shown['message']}" if shown else ""


def _card_shows(check: Check, name: str, text: str) -> Check:
    """``check``, and the card of the Tekton object ``name`` mentions ``text`` (its parameters)."""

    def shows(tools: list[dict[str, Any]]) -> bool:
        return check(tools) and any(
            tool_kind(t) in (PIPELINE_CARD, LISTENER_CARD)
            and t["parameters"]["name"].endswith(f"/{name}")
            and text in t["parameters"]["additional-properties"]
            for t in tools
        )

    return shows


def _listener(name: str) -> dict[str, Any]:
    """An EventListener of one trigger, as Kabanero 0.9's event-listener.yaml makes them."""
    return {
        "apiVersion": "triggers.tekton.dev/v1alpha1",
        "kind": "EventListener",
        "metadata": {"name": name, "namespace": "kabanero"},
        "spec": {
            "serviceAccountName": "event-listener",
            "triggers": [
                {
                    "name": "demo-push-event",
                    "bindings": [{"apiversion": "v1alpha1", "name": "demo-push-binding"}],
                    "template": {"apiversion": "v1alpha1", "name": "demo-template"},
                }
            ],
        },
    }


def _route(service: str, url: str) -> dict[str, Any]:
    """An OpenShift Route to ``service`` at ``url``'s host (TLS at the edge: https)."""
    return {
        "apiVersion": "route.openshift.io/v1",
        "kind": "Route",
        "metadata": {"name": service, "namespace": "kabanero"},
        "spec": {
            "host": url.removeprefix("https://"),
            "to": {"kind": "Service", "name": service},
            "port": {"targetPort": "http-listener"},
            "tls": {"termination": "edge"},
        },
    }


KIND_LABELS = {GITHUB: "GitHub"}


def tools_by_kind(number: int, row: tuple[str, str, str], tools: list[dict[str, Any]]) -> str:
    """One step as it completed: what happened, then every tool of the toolchain by kind and name
    (an EventListener's card with the external URL it shows)."""
    what, took, writes = row
    lines = [f"\n[{number}] {what}  (converged in {took}, {writes} OTC writes)"]
    by_kind: dict[tuple[str, str], list[str]] = {}
    for tool in tools:
        name = str(tool.get("name") or tool["id"])
        if tool_kind(tool) == LISTENER_CARD:
            exposed = json.loads(tool["parameters"]["additional-properties"]).get("external_url")
            name += f"  ({exposed or 'not exposed'})"
        by_kind.setdefault((tool_kind(tool), tool["tool_type_id"]), []).append(name)
    if not by_kind:
        lines.append("    toolchain: no tools")
    for (kind, type_id), names in sorted(by_kind.items()):
        label = f"{KIND_LABELS.get(kind, kind)} ({type_id}), {len(names)}"
        lines += [f"    {label}:"] + [f"      - {name}" for name in sorted(names)]
    return "\n".join(lines)


def cli_status(stack: Stack) -> str:
    """``kabanero-otc status`` of this stack, as an operator would run it (its own run file)."""
    run_file = stack.logs / f"demo-{stack.vhost}.json"
    fd = os.open(run_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(stack.describe(), f)
    try:
        proc = subprocess.run(  # noqa: S603 - our own console script
            [str(Path(sys.executable).parent / "kabanero-otc"), "--run-file", str(run_file), "status"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        run_file.unlink(missing_ok=True)
    return f"$ kabanero-otc status   (exit {proc.returncode})\n{proc.stdout}{proc.stderr}"


async def demo(vhost: str) -> int:
    stack = Stack(vhost)
    print("kabanero-otc demo: OTC mirrors the cluster; after each step, the toolchain's tools")
    scenario: Demo | None = None
    try:
        async with driving(stack, keep_vhost=True) as driver:
            scenario = Demo(driver, echo=print)
            await scenario.run()
            dead = await driver.dead_letter_counts()
            status = await asyncio.to_thread(cli_status, stack)
    except Exception as exc:
        print(f"\nDEMO FAILED: {exc}\nLogs: {LOGS}/", file=sys.stderr)
        return 1
    assert scenario is not None
    print("\nsummary")
    print(f"{'step':<66} {'converged':>9} {'OTC writes':>10}")
    for what, took, writes in scenario.rows:
        print(f"{what:<66} {took:>9} {writes:>10}")
    print(f"dead letters: {dead}")
    print(f"logs: {LOGS}/  (RabbitMQ vhost '{stack.vhost}' at http://127.0.0.1:15672, guest/guest)")
    print(f"\n{status}")
    return 0 if not any(dead.values()) else 1
