"""broker-api in-process (``build()``, HTTP_PORT=0) against the real RabbitMQ and the mongoeco server."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from services.broker_api.app import BrokerRuntime, Deps, build
from services.broker_api.outbox import EventSink, Outbox
from services.broker_api.settings import Settings
from shared.amqp import PublishError
from shared.events import CloudEvent, ServiceEventData
from tests.helpers import EventTap, wait_until

KEY = Fernet.generate_key().decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = basic("otc-broker", "broker-s3cret")
KB = "/kabanero-broker/api/v1"
KEB = "/kabanero-events-broker/api/v1"


def make_settings(mongodb_url: str, amqp_url: str, **kw: Any) -> Settings:
    kw = {"outbox_drain_interval_s": 0.2, "connect_timeout_s": 10, "publish_timeout_s": 5} | kw
    return Settings(
        broker_id="otc-broker",
        broker_secret="broker-s3cret",  # type: ignore[arg-type]
        credentials_key=KEY,  # type: ignore[arg-type]
        mongodb_url=mongodb_url,  # type: ignore[arg-type]
        amqp_url=amqp_url,  # type: ignore[arg-type]
        http_host="127.0.0.1",
        http_port=0,
        allowed_clusters="default,prod",
        **kw,
    )


@asynccontextmanager
async def running(settings: Settings, deps: Deps | None = None) -> AsyncIterator[BrokerRuntime]:
    runtime = build(settings, deps=deps)
    async with runtime:
        yield runtime


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: str | None = AUTH,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = json.dumps(body) if body is not None and not isinstance(body, bytes) else body
        hdrs = ({"Authorization": auth} if auth else {}) | (headers or {})
        async with self.session.request(method, self.base + path, data=data, headers=hdrs) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)


@pytest.fixture
async def broker(mongodb_url: str, amqp_url: str) -> AsyncIterator[tuple[BrokerRuntime, Client]]:
    async with running(make_settings(mongodb_url, amqp_url)) as rt, aiohttp.ClientSession() as session:
        yield rt, Client(session, rt.url)


@pytest.fixture
async def tap(amqp_url: str) -> AsyncIterator[EventTap]:
    async with EventTap(amqp_url, ("service.#",)) as t:
        yield t


async def raw_docs(mongodb_url: str) -> list[dict[str, Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        coll = client.get_default_database()["service_instances"]
        return [d async for d in coll.find({}, sort=[("_id", 1)])]
    finally:
        await client.close()


async def settled_docs(mongodb_url: str) -> list[dict[str, Any]]:
    """The documents once every published event left its outbox (the release is lazy,
    docs/design.md: what a later call must leave unchanged)."""

    async def released() -> bool:
        return all(not d.get("outbox") and "outbox_lease" not in d for d in await raw_docs(mongodb_url))

    await wait_until(released, timeout=10, what="the outbox released")
    return await raw_docs(mongodb_url)


def summary(events: list[CloudEvent]) -> list[tuple[str, int, str | None, list[str]]]:
    out = []
    for e in events:
        d = ServiceEventData.model_validate(e.data)
        out.append((e.routing_key, d.revision, d.toolchain_id, d.toolchains))
    return out


PROVISION = {
    "service_id": "kabanero",
    "organization_guid": "org-1",
    "parameters": {"cluster": "prod", "namespace": "team-a", "ignored": True},
    "service_credentials": "SERVICE-CRED-PLAINTEXT",
}


async def test_lifecycle_answers_and_events(broker: tuple[BrokerRuntime, Client], tap: EventTap) -> None:
    _, c = broker
    status, body = await c.call("PUT", f"{KB}/service_instances/sid-1", PROVISION)
    assert status == 200
    assert body == {
        "instance_id": "sid-1",
        "dashboard_url": "https://kabanero-landing-team-a.apps.prod.example.com/",
        "parameters": {"cluster": "prod", "namespace": "team-a", "label": "prod/team-a", "events": "manual"},
        "organization_guid": "org-1",
    }
    assert (await c.call("PUT", f"{KB}/service_instances/sid-1", PROVISION))[0] == 200  # identical: no event
    bind = {"toolchain_credentials": "TC-PLAINTEXT"}
    assert (await c.call("PUT", f"{KB}/service_instances/sid-1/toolchains/tc-1", bind))[0] == 204
    assert (await c.call("PUT", f"{KB}/service_instances/sid-1/toolchains/tc-1", bind))[0] == 204
    status, body = await c.call("PATCH", f"{KB}/service_instances/sid-1", {"parameters": {"name": "kab"}})
    assert status == 200 and body["parameters"]["label"] == "prod/team-a/kab"
    assert (await c.call("PUT", f"{KB}/service_instances/sid-1/toolchains/tc-2", bind))[0] == 204
    assert (await c.call("DELETE", f"{KB}/service_instances/sid-1/toolchains/tc-9"))[0] == 204
    assert (await c.call("DELETE", f"{KB}/service_instances/sid-1/toolchains"))[0] == 204
    assert (await c.call("DELETE", f"{KB}/service_instances/sid-1"))[0] == 204
    assert (await c.call("DELETE", f"{KB}/service_instances/sid-1"))[0] == 204
    assert (await c.call("DELETE", f"{KB}/service_instances/never-seen"))[0] == 204
    assert (await c.call("DELETE", f"{KB}/service_instances/never-seen/toolchains/t"))[0] == 204
    # re-provision of a deleted sid continues its revisions
    assert (await c.call("PUT", f"{KB}/service_instances/sid-1", PROVISION))[0] == 200
    await tap.wait_for(8)
    assert summary(tap.events) == [
        ("service.kabanero.provisioned", 1, None, []),
        ("service.kabanero.bound", 2, "tc-1", ["tc-1"]),
        ("service.kabanero.updated", 3, None, ["tc-1"]),
        ("service.kabanero.bound", 4, "tc-2", ["tc-1", "tc-2"]),
        ("service.kabanero.unbound", 5, "tc-1", ["tc-2"]),
        ("service.kabanero.unbound", 6, "tc-2", []),
        ("service.kabanero.deprovisioned", 7, None, []),
        ("service.kabanero.provisioned", 8, None, []),
    ]
    assert [e.id for e in tap.events][:2] == ["kabanero:sid-1:1", "kabanero:sid-1:2"]
    for event in tap.events:
        assert "PLAINTEXT" not in event.model_dump_json()


async def test_events_broker_uses_its_kind(broker: tuple[BrokerRuntime, Client], tap: EventTap) -> None:
    _, c = broker
    status, body = await c.call("PUT", f"{KEB}/service_instances/e1", {"service_id": "kabanero-events"})
    assert status == 200 and body["parameters"] == {
        "cluster": "default",
        "namespace": "kabanero",
        "label": "default/kabanero",
    }
    assert "organization_guid" in body and body["organization_guid"] is None  # the shape is fixed
    # the same sid on the other broker is a different instance
    status, _ = await c.call("PATCH", f"{KB}/service_instances/e1", {"parameters": {}})
    assert status == 404
    (event,) = await tap.wait_for(1)
    assert event.routing_key == "service.kabanero-events.provisioned"


async def test_credentials_are_encrypted_at_rest_and_kept(
    broker: tuple[BrokerRuntime, Client], mongodb_url: str
) -> None:
    _, c = broker
    await c.call("PUT", f"{KB}/service_instances/s", PROVISION)
    await c.call("PUT", f"{KB}/service_instances/s/toolchains/t", {"toolchain_credentials": "TC-PLAINTEXT"})
    await c.call("PUT", f"{KB}/service_instances/s", {**PROVISION, "service_credentials": None})
    (doc,) = await raw_docs(mongodb_url)
    dumped = json.dumps(doc, default=str)
    assert "PLAINTEXT" not in dumped
    assert doc["service_credentials"] and doc["toolchains"][0]["credentials"]
    assert doc["schema_version"] == 1 and doc["state"] == "active" and doc["revision"] == 2
    f = Fernet(KEY.encode())
    assert f.decrypt(doc["service_credentials"].encode()) == b"SERVICE-CRED-PLAINTEXT"
    # an empty value is an omission too: the stored credentials stay, nothing changes
    assert (await c.call("PUT", f"{KB}/service_instances/s", {**PROVISION, "service_credentials": ""}))[
        0
    ] == 200
    (doc,) = await raw_docs(mongodb_url)
    assert doc["revision"] == 2
    assert f.decrypt(doc["service_credentials"].encode()) == b"SERVICE-CRED-PLAINTEXT"
    # PATCH takes credentials in the same forms as PUT (string or object)
    status, _ = await c.call(
        "PATCH", f"{KB}/service_instances/s", {"service_credentials": {"k": "PLAINTEXT"}}
    )
    assert status == 200
    (doc,) = await raw_docs(mongodb_url)
    assert f.decrypt(doc["service_credentials"].encode()) == b'{"k": "PLAINTEXT"}'
    await c.call("DELETE", f"{KB}/service_instances/s")
    (doc,) = await raw_docs(mongodb_url)
    assert doc["state"] == "deleted" and doc["service_credentials"] is None and doc["toolchains"] == []


BAD_REQUESTS: list[tuple[str, str, Any, dict[str, Any], int, str]] = [
    ("PUT", f"{KB}/service_instances/x", b"{not json", {}, 400, "malformed JSON"),
    ("PUT", f"{KB}/service_instances/x", [1, 2], {}, 400, "JSON object"),
    ("PUT", f"{KB}/service_instances/x", {"parameters": {}}, {}, 400, "'service_id' is required"),
    ("PUT", f"{KB}/service_instances/x", {"service_id": "kabanero-events"}, {}, 400, "service_id"),
    ("PUT", f"{KB}/service_instances/x", {"service_id": 7}, {}, 400, "'service_id'"),
    (
        "PUT",
        f"{KB}/service_instances/x",
        {"service_id": "kabanero", "parameters": {"cluster": "nope"}},
        {},
        400,
        "parameters.cluster",
    ),
    (
        "PUT",
        f"{KB}/service_instances/x",
        {"service_id": "kabanero", "parameters": "ns"},
        {},
        400,
        "'parameters'",
    ),
    (
        "PUT",
        f"{KB}/service_instances/{'a' * 256}",
        {"service_id": "kabanero"},
        {},
        400,
        "service instance id",
    ),
    ("PUT", f"{KB}/service_instances/a%20b", {"service_id": "kabanero"}, {}, 400, "service instance id"),
    ("PUT", f"{KB}/service_instances/x", {"service_id": "kabanero"}, {"auth": None}, 401, "authorization"),
    (
        "PUT",
        f"{KB}/service_instances/x",
        {"service_id": "kabanero"},
        {"auth": basic("otc-broker", "wrong")},
        401,
        "authorization",
    ),
    (
        "PUT",
        f"{KB}/service_instances/x",
        {"service_id": "kabanero"},
        {"auth": None, "headers": {"Authorization": "Bearer abc"}},
        401,
        "authorization",
    ),
    (
        "PUT",
        f"{KB}/service_instances/x",
        {"service_id": "kabanero"},
        {"auth": None, "headers": {"Authorization": "Basic !!!"}},
        401,
        "authorization",
    ),
    ("PUT", f"{KB}/service_instances/x", b"{" + b" " * 70000 + b"}", {}, 413, "64"),
    ("PATCH", f"{KB}/service_instances/unknown", {"parameters": {}}, {}, 404, "not found"),
    (
        "PUT",
        f"{KB}/service_instances/unknown/toolchains/t",
        {"toolchain_credentials": "c"},
        {},
        404,
        "not found",
    ),
    ("PUT", f"{KB}/service_instances/x/toolchains/t", {}, {}, 400, "'toolchain_credentials' is required"),
    (
        "PUT",
        f"{KB}/service_instances/x/toolchains/{'t' * 300}",
        {"toolchain_credentials": "c"},
        {},
        400,
        "toolchain id",
    ),
    ("GET", f"{KB}/service_instances/x", None, {}, 405, "method GET"),
    ("GET", "/nope", None, {}, 404, "no such route"),
    ("PUT", "/other-broker/api/v1/service_instances/x", {"service_id": "kabanero"}, {}, 404, "no such route"),
    ("POST", f"{KB}/messaging/accept", {"service_id": "toolchain"}, {}, 400, "'instance_id' is required"),
    (
        "POST",
        f"{KB}/messaging/accept",
        {"service_id": "toolchain", "instance_id": "nope", "toolchain_id": "t", "payload": {}},
        {},
        400,
        "unknown 'instance_id'",
    ),
    (
        "POST",
        f"{KB}/messaging/accept",
        {"service_id": "toolchain", "instance_id": "nope", "toolchain_id": "t", "payload": {}},
        {"auth": None},
        401,
        "authorization",
    ),
    # no credentials at all: 401 before the body is even looked at
    ("POST", f"{KB}/messaging/accept", {"service_id": "toolchain"}, {"auth": None}, 401, "authorization"),
    (
        "POST",
        f"{KB}/messaging/accept",
        b"{not json",
        {"auth": None, "headers": {"Authorization": "Bearer x"}},
        401,
        "authorization",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "kw", "status", "fragment"),
    BAD_REQUESTS,
    ids=[f"{m}-{s}-{f[:20]}" for m, _, _, _, s, f in BAD_REQUESTS],
)
async def test_bad_input_is_a_json_4xx_without_state_change(
    broker: tuple[BrokerRuntime, Client],
    mongodb_url: str,
    method: str,
    path: str,
    body: Any,
    kw: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    _, c = broker
    assert (await c.call("PUT", f"{KB}/service_instances/x", {"service_id": "kabanero"}))[0] == 200
    before = await settled_docs(mongodb_url)
    got, answer = await c.call(method, path, body, **kw)
    assert got == status, answer
    assert fragment in answer["description"]
    assert "s3cret" not in answer["description"]
    assert await raw_docs(mongodb_url) == before


async def test_chunked_body_over_limit_is_413(broker: tuple[BrokerRuntime, Client]) -> None:
    rt, c = broker

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"service_id": "kabanero", "pad": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    async with c.session.put(
        f"{rt.url}{KB}/service_instances/big", data=chunks(), headers={"Authorization": AUTH}
    ) as resp:
        assert resp.status == 413
        assert "description" in await resp.json()


async def test_messaging_accept_with_broker_or_toolchain_credentials(
    broker: tuple[BrokerRuntime, Client],
) -> None:
    _, c = broker
    await c.call("PUT", f"{KB}/service_instances/m", {"service_id": "kabanero"})
    await c.call("PUT", f"{KB}/service_instances/m/toolchains/tc", {"toolchain_credentials": "dGM6c2VjcmV0"})
    msg = {"service_id": "toolchain", "instance_id": "m", "toolchain_id": "tc", "payload": {"event": "bind"}}
    assert (await c.call("POST", f"{KB}/messaging/accept", msg))[0] == 204
    as_toolchain = {"Authorization": "Basic dGM6c2VjcmV0"}
    assert (await c.call("POST", f"{KB}/messaging/accept", msg, auth=None, headers=as_toolchain))[0] == 204
    wrong = {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}
    assert (await c.call("POST", f"{KB}/messaging/accept", msg, auth=None, headers=wrong))[0] == 401
    other_tc = {**msg, "toolchain_id": "other"}
    assert (await c.call("POST", f"{KB}/messaging/accept", other_tc, auth=None, headers=as_toolchain))[
        0
    ] == 401


async def test_unauthenticated_endpoints_and_openapi(broker: tuple[BrokerRuntime, Client]) -> None:
    rt, c = broker
    for path in ("/status", "/version", "/healthz", "/readyz", "/openapi.json"):
        status, _ = await c.call("GET", path, auth=None)
        assert status == 200, path
    assert (await c.call("GET", "/status", auth=None))[1]["status"] == "ok"
    async with c.session.get(rt.url + "/metrics") as resp:
        assert resp.status == 200
        assert "kotc_broker_api_requests_total" in await resp.text()
    _, spec = await c.call("GET", "/openapi.json", auth=None)
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    app_routes = {
        (route.method, route.resource.canonical)
        for route in _app_routes(rt)
        if route.method != "HEAD" and route.resource is not None
    }
    assert app_routes and app_routes <= documented, app_routes - documented
    # a 405 names the methods the route has (RFC 9110), before any auth check
    for method, path, allow in (
        ("POST", "/status", "GET, HEAD"),
        ("PATCH", f"{KB}/service_instances/x/toolchains/t", "DELETE, PUT"),
        ("OPTIONS", f"{KEB}/messaging/accept", "POST"),
    ):
        async with c.session.request(method, rt.url + path) as resp:
            assert (resp.status, resp.headers.get("Allow")) == (405, allow), path
            assert "description" in await resp.json()


async def test_request_metrics_do_not_take_label_values_from_clients(
    broker: tuple[BrokerRuntime, Client],
) -> None:
    rt, c = broker
    await c.call("PUT", f"{KB}/service_instances/m", {"service_id": "kabanero"})
    await c.call("PUT", f"{KB}/service_instances/m/toolchains/tc", {"toolchain_credentials": "tc"})
    for i, method in enumerate(("PROPFIND", "MKCOL", "PURGE")):
        status, body = await c.call(method, "/status", auth=None)
        assert status == 405 and "description" in body
        msg = {"service_id": f"xsource{i}", "instance_id": "m", "toolchain_id": "tc", "payload": {}}
        assert (await c.call("POST", f"{KB}/messaging/accept", msg))[0] == 204
    async with c.session.get(rt.url + "/metrics") as resp:
        text = await resp.text()
    assert "PROPFIND" not in text and "PURGE" not in text and "xsource" not in text
    assert 'method="other"' in text and 'source="other"' in text


def _app_routes(rt: BrokerRuntime) -> list[Any]:
    assert rt.app is not None
    return list(rt.app.router.routes())


class Switch:
    """Wraps the real publisher; fails every publish while ``broken``."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self.broken = False

    async def publish(self, event: CloudEvent) -> None:
        if self.broken:
            raise PublishError("simulated: RabbitMQ unreachable")
        await self.sink.publish(event)


async def test_outbox_delivers_events_after_publishing_recovers(
    mongodb_url: str, amqp_url: str, tap: EventTap
) -> None:
    switches: list[Switch] = []

    def wrap(sink: EventSink) -> EventSink:
        switches.append(Switch(sink))
        return switches[-1]

    settings = make_settings(mongodb_url, amqp_url)
    async with running(settings, Deps(wrap_sink=wrap)) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        switches[0].broken = True
        assert (await c.call("PUT", f"{KB}/service_instances/o", PROVISION))[0] == 200
        assert (
            await c.call("PUT", f"{KB}/service_instances/o/toolchains/t1", {"toolchain_credentials": "c"})
        )[0] == 204
        assert (await c.call("DELETE", f"{KB}/service_instances/o/toolchains/t1"))[0] == 204
        (doc,) = await raw_docs(mongodb_url)
        assert [e["id"] for e in doc["outbox"]] == ["kabanero:o:1", "kabanero:o:2", "kabanero:o:3"]
        assert tap.events == []
        switches[0].broken = False
        await tap.wait_for(3, timeout=10)
        assert [(k, r) for k, r, _, _ in summary(tap.events)] == [
            ("service.kabanero.provisioned", 1),
            ("service.kabanero.bound", 2),
            ("service.kabanero.unbound", 3),
        ]
        await wait_until(lambda: _outbox_empty(mongodb_url), timeout=5, what="outbox emptied after publish")


async def _outbox_empty(mongodb_url: str) -> bool:
    return all(not d.get("outbox") for d in await raw_docs(mongodb_url))


async def test_outbox_survives_a_restart(mongodb_url: str, amqp_url: str, tap: EventTap) -> None:
    """Committed while publishing fails, then the process stops: the next process publishes it."""
    broken = Switch

    def always_broken(sink: EventSink) -> EventSink:
        s = broken(sink)
        s.broken = True
        return s

    settings = make_settings(mongodb_url, amqp_url)
    async with running(settings, Deps(wrap_sink=always_broken)) as rt, aiohttp.ClientSession() as session:
        assert (await Client(session, rt.url).call("PUT", f"{KB}/service_instances/r", PROVISION))[0] == 200
    assert tap.events == []
    async with running(settings):
        (event,) = await tap.wait_for(1, timeout=10)
    assert event.id == "kabanero:r:1"


async def test_concurrent_binds_and_unbinds_on_one_sid_from_two_replicas(
    mongodb_url: str, amqp_url: str, tap: EventTap
) -> None:
    settings = make_settings(mongodb_url, amqp_url)
    async with (
        running(settings) as rt1,
        running(settings) as rt2,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session,
    ):
        a, b = Client(session, rt1.url), Client(session, rt2.url)
        assert (await a.call("PUT", f"{KB}/service_instances/hot", PROVISION))[0] == 200
        tids = [f"tc-{i}" for i in range(24)]
        # every bind twice (the repeat must be a no-op), alternating replicas
        binds = [
            ((a if i % 2 else b), f"{KB}/service_instances/hot/toolchains/{t}", {"toolchain_credentials": t})
            for i, t in enumerate(tids)
            for _ in range(2)
        ]
        results = await asyncio.gather(*(c.call("PUT", path, body) for c, path, body in binds))
        assert {s for s, _ in results} == {204}
        # now unbind half of them concurrently, on both replicas
        gone = tids[::2]
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).call("DELETE", f"{KB}/service_instances/hot/toolchains/{t}")
                for i, t in enumerate(gone * 2)
            )
        )
        assert {s for s, _ in results} == {204}
        expected_events = 1 + len(tids) + len(gone)
        await tap.wait_for(expected_events, timeout=20)
    (doc,) = await raw_docs(mongodb_url)
    assert sorted(b["id"] for b in doc["toolchains"]) == sorted(set(tids) - set(gone))
    assert doc["revision"] == expected_events
    revisions = [ServiceEventData.model_validate(e.data).revision for e in tap.events]
    assert sorted(revisions) == list(range(1, expected_events + 1))  # no lost, no duplicate change
    bound = [e for e in tap.events if e.routing_key.endswith(".bound")]
    assert sorted(ServiceEventData.model_validate(e.data).toolchain_id or "" for e in bound) == sorted(tids)
    assert not doc.get("outbox")


async def test_outbox_lease_is_renewed_during_a_slow_flush(mongodb_url: str) -> None:
    """A flush that outlasts the lease keeps it: another replica must not publish the same
    events concurrently (duplicates, out of order)."""
    published: list[tuple[str, str]] = []

    class SlowSink:
        def __init__(self, name: str) -> None:
            self.name = name

        async def publish(self, event: CloudEvent) -> None:
            await asyncio.sleep(0.15)
            published.append((self.name, event.id))

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        coll = client.get_default_database()["outbox_lease_test"]
        event = CloudEvent(source="/t", type="io.kabanero.otc.service.kabanero.updated")
        entries = [
            {"id": f"e{i}", "revision": i, "routing_key": "service.kabanero.updated", "event": {}}
            for i in range(1, 6)
        ]
        for e in entries:
            e["event"] = event.model_copy(update={"id": e["id"]}).model_dump(mode="json")
        await coll.insert_one({"_id": "k", "outbox": entries})
        first = Outbox(coll, SlowSink("a"), CollectorRegistry(), lease_s=0.4)
        second = Outbox(coll, SlowSink("b"), CollectorRegistry(), lease_s=0.4)
        flushing = asyncio.create_task(first.flush("k"))
        await wait_until(lambda: len(published) >= 3, timeout=5, what="the lease to be older than 0.4 s")
        assert not await second.flush("k")  # still held by the first replica
        assert await flushing
    finally:
        await client.close()
    assert published == [("a", f"e{i}") for i in range(1, 6)]
