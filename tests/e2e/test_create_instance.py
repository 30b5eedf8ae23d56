"""``parameters.create: true`` end to end: a Kabanero service creates, patches and deletes its own
Kabanero CR through the watcher of that cluster (real processes, Kubernetes and OTC emulators).

A CR that someone else made is refused and left unchanged (never adopted, changed or deleted);
the commands survive a SIGKILL of the watcher; the created instance's repositories reach OTC as
GitHub tools like any instance's; a spec the CRD schema refuses is a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from kotc_cli.config import KEYS, SERVICE_ENV
from scripts.driver import GITHUB, Driver, tool_kind
from scripts.stack import Stack, free_port, mgmt, wait_http, write_run_file
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
MARK = "kabanero-otc.io/service-instance"
CLI = Path(sys.executable).parent / "kabanero-otc"
CR = "/apis/kabanero.io/v1alpha2/namespaces/{ns}/kabaneros/{name}"


def spec(*repos: str) -> dict[str, Any]:
    return {
        "version": "0.9.2",
        "stacks": {
            "repositories": [
                {
                    "name": f"hub-{i}",
                    "https": {
                        "url": f"https://github.com/acme/{r}/releases/download/0.9.0/kabanero-index.yaml"
                    },
                }
                for i, r in enumerate(repos)
            ]
        },
    }


async def cr_of(w: Driver, ns: str, name: str = "kabanero") -> dict[str, Any] | None:
    status, body = await w.get(w.kube_url(CR.format(ns=ns, name=name)))
    return body if status == 200 else None


async def outcome_of(w: Driver, sid: str, watcher: str | None = None) -> dict[str, Any] | None:
    status, body = await w.get(f"{watcher or w.stack.url('watcher')}/instances")
    if status != 200:
        return None
    return next((i for i in body["instances"] if i["instance_id"] == sid), None)


async def dashboard_of(w: Driver, url: str, *, html: bool = False) -> Any:
    """The service's dashboard page as a browser (HTML) or a script (JSON) gets it: no credentials."""
    accept = "text/html" if html else "application/json"
    async with w.http.get(url, headers={"Accept": accept}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Referrer-Policy"] == "no-referrer"
        return await (r.text() if html else r.json())


async def github_repos(w: Driver) -> set[str]:
    return {t["parameters"]["repo_url"] for t in await w.tools() if tool_kind(t) == GITHUB}


def status(stack: Stack) -> dict[str, Any]:
    """``kabanero-otc status --json`` as an operator runs it, from the stack's run file."""
    env = {k: v for k, v in os.environ.items() if k not in KEYS and k not in SERVICE_ENV.values()}
    env["KOTC_RUN_FILE"] = str(write_run_file(stack))
    proc = subprocess.run(
        [str(CLI), "--json", "status"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.stdout.strip(), proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the module (a start costs seconds of CPU): each test uses its own namespaces,
    service ids and toolchain, and ``world`` puts the watchers back as they were after each test."""
    env = {"kabanero-watcher": {"LEASE_DURATION_S": "3", "LEASE_RENEW_S": "1"}}
    stack = Stack(
        f"kotc-test-create-{uuid.uuid4().hex[:8]}",
        logs=tmp_path_factory.mktemp("create") / ".run",
        extra_env=env,
    )
    try:
        asyncio.run(stack.start())
        yield stack
    finally:
        asyncio.run(_stop(stack))


async def _stop(stack: Stack) -> None:
    """As ``scripts.driver.driving`` stops a stack: services first, then the rest, then the vhost."""
    for name, _ in reversed(stack.procs):
        if name not in ("mongo", "otc") and not name.startswith("kube"):
            await asyncio.to_thread(stack.kill, name, signal.SIGTERM)
    await asyncio.to_thread(stack.stop)
    with contextlib.suppress(RuntimeError, aiohttp.ClientError, OSError):
        await mgmt("DELETE", f"vhosts/{urllib.parse.quote(stack.vhost, safe='')}")


@pytest.fixture
async def world(shared_stack: Stack) -> AsyncIterator[Driver]:
    """The module's stack with a toolchain of this test's own. Afterwards the processes are as the
    stack started them: a second watcher a test spawned is stopped (SIGTERM: it releases the Lease),
    and the watcher runs again with its own arguments and environment if a test changed, stopped or
    replaced it."""
    stack = shared_stack
    stack.check_alive()
    names = [n for n, _ in stack.procs]
    watcher_spec = stack.specs["kabanero-watcher"]
    async with aiohttp.ClientSession() as http:
        w = Driver(stack, http)
        try:
            w.toolchain = await w.new_toolchain(f"test-create-{uuid.uuid4().hex[:6]}")
            yield w
        finally:
            await w.close()
            for name in [n for n, _ in stack.procs if n not in names]:
                await asyncio.to_thread(stack.kill, name, signal.SIGTERM)
                stack.procs = [(n, p) for n, p in stack.procs if n != name]
                stack.specs.pop(name, None)
            changed = stack.specs["kabanero-watcher"] != watcher_spec
            stack.specs["kabanero-watcher"] = watcher_spec
            if changed or stack.proc("kabanero-watcher").poll() is not None:
                await stack.restart("kabanero-watcher", signal.SIGTERM if changed else None)


async def test_instance_created_patched_deleted_foreign_cr_refused_survives_watcher_kill(
    world: Driver,
) -> None:
    w, stack = world, world.stack
    seeded = await cr_of(w, "kabanero")
    assert seeded is not None and MARK not in (seeded["metadata"].get("annotations") or {})
    otc = w.platform
    # A spec the CRD refuses: 400 naming the field, nothing stored.
    bad = {"namespace": "team-new", "create": True, "instance": {"stacks": {"repositories": "x"}}}
    reply = await otc.provision("kabanero-broker", "kab-new", parameters=bad)
    assert reply.status == 400 and "parameters.instance.stacks.repositories" in reply.body["description"]
    assert (await otc.update("kabanero-broker", "kab-new", parameters={})).status == 404

    # Created: the answer comes at once; the watcher creates the CR with our mark.
    params = {"namespace": "team-new", "create": True, "instance": spec("hub-a")}
    reply = await otc.provision("kabanero-broker", "kab-new", parameters=params)
    assert reply.status == 200 and reply.body["parameters"]["create"] is True, reply
    dashboard = reply.body["dashboard_url"]
    assert dashboard.startswith(f"{stack.url('broker')}/dashboard/kab-new/"), dashboard
    await wait_until(lambda: _outcome_is(w, "kab-new", "created"), timeout=45, what="CR created")
    # The service's dashboard (no credentials: a browser opens it) shows the outcome.
    await wait_until(lambda: _dashboard_says(w, dashboard, "created"), timeout=30, what="dashboard")
    page = await dashboard_of(w, dashboard, html=True)
    assert "created" in page and "team-new" in page and "Kabanero landing page" in page
    assert stack.broker_secret not in page and "kab-new" in page
    async with w.http.get(dashboard.rsplit("/", 1)[0] + "/AAAAAAAAAAAAAAAAAAAAAA") as r:
        assert r.status == 404  # a wrong token: no such dashboard
    created = await cr_of(w, "team-new")
    assert created is not None and created["spec"] == spec("hub-a")
    assert created["metadata"]["annotations"][MARK] == "kab-new"
    assert created["metadata"]["labels"][MARK] == "kab-new"
    # Its repositories flow to OTC like any instance's.
    assert (await otc.bind("kabanero-broker", "kab-new", w.toolchain)).status == 204
    await wait_until(lambda: _repos(w, {"https://github.com/acme/hub-a"}), timeout=45, what="GitHub tool")

    # A pre-existing CR (the seeded one, made by someone else) is refused and left unchanged.
    reply = await otc.provision(
        "kabanero-broker",
        "kab-foreign",
        parameters={"namespace": "kabanero", "create": True, "instance": spec("x")},
    )
    assert reply.status == 200
    await wait_until(lambda: _outcome_is(w, "kab-foreign", "refused"), timeout=45, what="refused")
    outcome = await outcome_of(w, "kab-foreign")
    assert outcome is not None and "not created by this service" in outcome["message"]
    foreign_dashboard = reply.body["dashboard_url"]
    await wait_until(
        lambda: _dashboard_says(w, foreign_dashboard, "refused"), timeout=30, what="refusal shown"
    )
    shown = await dashboard_of(w, foreign_dashboard)
    assert "not created by this service" in shown["outcome"]["message"]
    after = await cr_of(w, "kabanero")
    assert after is not None and after["metadata"]["resourceVersion"] == seeded["metadata"]["resourceVersion"]

    # Both outcomes show in `kabanero-otc status` (the refusal as a problem, with its reason).
    report = await asyncio.to_thread(status, stack)
    rows = {i["instance_id"]: i for i in report["kabanero_services"]}
    assert (rows["kab-new"]["creates_instance"], rows["kab-new"]["instance_outcome"]) == (True, "created")
    assert rows["kab-foreign"]["instance_outcome"] == "refused"
    assert any("kab-foreign" in p and "not created by this service" in p for p in report["problems"])

    # The watcher is SIGKILLed; a PATCH of the spec and a delete are committed while it is down.
    assert stack.kill("kabanero-watcher") == -signal.SIGKILL
    reply = await otc.update("kabanero-broker", "kab-new", parameters={"instance": spec("hub-a", "hub-b")})
    assert reply.status == 200, reply
    assert (await otc.deprovision("kabanero-broker", "kab-foreign")).status == 204
    await stack.restart("kabanero-watcher", sig=None)
    await wait_until(lambda: _outcome_is(w, "kab-new", "updated"), timeout=60, what="spec patched")
    await wait_until(lambda: _dashboard_says(w, dashboard, "updated"), timeout=30, what="dashboard")
    patched = await cr_of(w, "team-new")
    assert patched is not None and patched["spec"] == spec("hub-a", "hub-b")
    assert patched["metadata"]["uid"] == created["metadata"]["uid"]  # the same CR, replaced in place
    await wait_until(
        lambda: _repos(w, {"https://github.com/acme/hub-a", "https://github.com/acme/hub-b"}),
        timeout=45,
        what="second GitHub tool",
    )
    # Deleting the foreign service's record deleted nothing in the cluster.
    await wait_until(lambda: _says(w, "kab-foreign", "not deleted"), timeout=30, what="delete refused")
    still = await cr_of(w, "kabanero")
    assert still is not None and still["metadata"]["resourceVersion"] == seeded["metadata"]["resourceVersion"]

    # Deprovision deletes the CR it created (and its GitHub tools go).
    assert (await otc.deprovision("kabanero-broker", "kab-new")).status == 204
    await wait_until(lambda: _outcome_is(w, "kab-new", "deleted"), timeout=45, what="CR deleted")
    assert await cr_of(w, "team-new") is None
    await wait_until(lambda: _dashboard_says(w, dashboard, "deleted"), timeout=30, what="dashboard")
    assert (await dashboard_of(w, dashboard))["state"] == "deleted"
    await wait_until(lambda: _repos(w, set()), timeout=45, what="GitHub tools removed")


async def _outcome_is(w: Driver, sid: str, outcome: str, watcher: str | None = None) -> bool:
    got = await outcome_of(w, sid, watcher)
    return got is not None and got["outcome"] == outcome


async def _dashboard_says(w: Driver, url: str, outcome: str) -> bool:
    shown = (await dashboard_of(w, url))["outcome"]
    return shown is not None and shown["outcome"] == outcome


async def _says(w: Driver, sid: str, text: str) -> bool:
    got = await outcome_of(w, sid)
    return got is not None and got["outcome"] == "refused" and text in got["message"]


async def _repos(w: Driver, want: set[str]) -> bool:
    return await github_repos(w) == want


async def test_commands_continue_after_a_lease_handover(world: Driver) -> None:
    """Two watcher replicas: the leader is stopped (it releases its Lease), the standby takes over
    and carries out the PATCH and the delete committed meanwhile; the CR is the same one."""
    w, stack = world, world.stack
    args, env = stack.specs["kabanero-watcher"]
    port = free_port()
    stack.spawn("kabanero-watcher-2", args, {**env, "HTTP_PORT": str(port), "HOLDER_IDENTITY": "watcher-2"})
    second = f"http://127.0.0.1:{port}"
    await wait_http(f"{second}/healthz", "second watcher", timeout=60)
    otc = w.platform
    params = {"namespace": "team-ho", "create": True, "instance": spec("hub-a")}
    assert (await otc.provision("kabanero-broker", "kab-ho", parameters=params)).status == 200
    await wait_until(lambda: _outcome_is(w, "kab-ho", "created", second), timeout=45, what="CR created")
    created = await cr_of(w, "team-ho")
    assert created is not None
    lease_url = w.kube_url("/apis/coordination.k8s.io/v1/namespaces/kabanero/leases/kabanero-watcher")
    assert (await w.get(lease_url))[1]["spec"]["holderIdentity"] != "watcher-2"  # the first one leads
    # The leader stops (it releases the Lease); the PATCH lands during the handover.
    assert stack.kill("kabanero-watcher", signal.SIGTERM) == 0
    reply = await otc.update("kabanero-broker", "kab-ho", parameters={"instance": spec("hub-a", "hub-b")})
    assert reply.status == 200
    await wait_until(lambda: _outcome_is(w, "kab-ho", "updated", second), timeout=60, what="patched")
    patched = await cr_of(w, "team-ho")
    assert patched is not None and patched["spec"] == spec("hub-a", "hub-b")
    assert patched["metadata"]["uid"] == created["metadata"]["uid"]
    lease = await w.get(
        w.kube_url("/apis/coordination.k8s.io/v1/namespaces/kabanero/leases/kabanero-watcher")
    )
    assert lease[1]["spec"]["holderIdentity"] == "watcher-2"
    assert (await otc.deprovision("kabanero-broker", "kab-ho")).status == 204
    await wait_until(lambda: _outcome_is(w, "kab-ho", "deleted", second), timeout=45, what="deleted")
    assert await cr_of(w, "team-ho") is None


async def test_namespace_creation_setting_both_values(world: Driver) -> None:
    """``CREATE_NAMESPACES`` through the real watcher and a Kubernetes emulator that, like a real API
    server, refuses an object in a missing namespace: allowed, the namespace and the CR are created;
    not allowed, the create is refused with the API server's own message, shown in the outcome and
    on the service's dashboard, and nothing is created."""
    w, stack = world, world.stack
    namespaces = w.kube_url("/api/v1/namespaces") + "/{ns}"
    assert (await w.get(namespaces.format(ns="team-yes")))[0] == 404
    otc = w.platform
    # Allowed (the stack's setting): the namespace first, then the CR.
    params = {"namespace": "team-yes", "create": True, "instance": spec("hub-a")}
    assert (await otc.provision("kabanero-broker", "kab-yes", parameters=params)).status == 200
    await wait_until(lambda: _outcome_is(w, "kab-yes", "created"), timeout=45, what="CR created")
    assert (await w.get(namespaces.format(ns="team-yes")))[0] == 200
    assert await cr_of(w, "team-yes") is not None

    # Not allowed: the watcher restarts with CREATE_NAMESPACES=false.
    args, env = stack.specs["kabanero-watcher"]
    stack.specs["kabanero-watcher"] = (args, {**env, "CREATE_NAMESPACES": "false"})
    await stack.restart("kabanero-watcher")
    params = {"namespace": "team-no", "create": True, "instance": spec("hub-a")}
    reply = await otc.provision("kabanero-broker", "kab-no", parameters=params)
    assert reply.status == 200
    await wait_until(lambda: _outcome_is(w, "kab-no", "failed"), timeout=45, what="create refused")
    outcome = await outcome_of(w, "kab-no")
    assert outcome is not None and 'namespaces "team-no" not found' in outcome["message"], outcome
    assert "(404)" in outcome["message"]
    await wait_until(
        lambda: _dashboard_says(w, reply.body["dashboard_url"], "failed"), timeout=30, what="dashboard"
    )
    shown = await dashboard_of(w, reply.body["dashboard_url"])
    assert 'namespaces "team-no" not found' in shown["outcome"]["message"]
    assert (await w.get(namespaces.format(ns="team-no")))[0] == 404
    assert await cr_of(w, "team-no") is None
    # The instance created before is untouched.
    assert (await outcome_of(w, "kab-yes") or {}).get("outcome") == "created"


async def test_sigkill_between_the_cr_write_and_its_record(world: Driver) -> None:
    """The watcher dies (SIGKILL, injected by tests/e2e/crashing_watcher.py) right after the API server
    created the CR and before the outcome was recorded or acked. The restarted watcher gets the command
    again, finds the CR with our mark and reports it created: one CR, never written again, nothing
    else changed, and later commands work as usual."""
    w, stack = world, world.stack
    seeded = await cr_of(w, "kabanero")
    assert seeded is not None
    normal_args, env = stack.specs["kabanero-watcher"]
    stack.specs["kabanero-watcher"] = (["tests.e2e.crashing_watcher"], env)
    await stack.restart("kabanero-watcher")
    params = {"namespace": "team-crash", "create": True, "instance": spec("hub-a")}
    reply = await w.provision("kabanero-broker", "kab-crash", params)  # retried on 503 as OTC does
    assert reply.status == 200, reply
    dashboard = reply.body["dashboard_url"]
    proc = stack.proc("kabanero-watcher")
    assert await asyncio.to_thread(proc.wait, 60) == -signal.SIGKILL
    made = await cr_of(w, "team-crash")
    assert made is not None and made["metadata"]["annotations"][MARK] == "kab-crash"
    assert await _owned_record(stack, "kab-crash") is None  # killed before the record
    assert (await dashboard_of(w, dashboard))["outcome"] is None

    stack.specs["kabanero-watcher"] = (normal_args, env)
    await stack.restart("kabanero-watcher", sig=None)
    await wait_until(lambda: _outcome_is(w, "kab-crash", "created"), timeout=60, what="reported created")
    outcome = await outcome_of(w, "kab-crash")
    assert outcome is not None and outcome["message"] == (
        "Kabanero team-crash/kabanero created for service kab-crash"
    )
    await wait_until(lambda: _dashboard_says(w, dashboard, "created"), timeout=30, what="dashboard")
    # The CR the killed process made, once and unchanged; the other CR untouched.
    _, listed = await w.get(w.kube_url("/apis/kabanero.io/v1alpha2/namespaces/team-crash/kabaneros"))
    assert [i["metadata"]["uid"] for i in listed["items"]] == [made["metadata"]["uid"]]
    assert listed["items"][0]["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]
    still = await cr_of(w, "kabanero")
    assert still is not None and still["metadata"]["resourceVersion"] == seeded["metadata"]["resourceVersion"]
    # The command was not repeated: the next one (a PATCH) applies to the same CR.
    reply = await w.broker(
        lambda otc: otc.update("kabanero-broker", "kab-crash", parameters={"instance": spec("hub-b")}), 200
    )
    assert reply.status == 200, reply
    await wait_until(lambda: _outcome_is(w, "kab-crash", "updated"), timeout=45, what="patched")
    patched = await cr_of(w, "team-crash")
    assert patched is not None and patched["metadata"]["uid"] == made["metadata"]["uid"]
    assert patched["spec"] == spec("hub-b")


async def _owned_record(stack: Stack, sid: str) -> dict[str, Any] | None:
    """The watcher's outcome record, read from its collection (the watcher is down)."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.common_env(0)["MONGODB_URL"])
    try:
        return await mongo.get_default_database()["watch_owned_instances"].find_one({"_id": sid})
    finally:
        await mongo.close()
