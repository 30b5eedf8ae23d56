"""The Tekton broker (``tekton-broker``, OTC service_id ``tekton``) through real HTTP, the real
RabbitMQ and the MongoDB wire server: the broker contract on the same code path as the Kabanero
brokers, its parameters (``cluster``, ``namespaces``) and their refusals, the ``BROKERS`` setting
(a Tekton-only deployment), and the service's page fed by ``tekton.installation.changed``."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiohttp
import aiormq
import pytest
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families

from services.broker_api.app import BrokerRuntime
from shared.amqp.publisher import to_message
from shared.amqp.topology import EXCHANGE, owned_instances_queue
from shared.events import CloudEvent, RoutingKeys, ServiceEventData, TektonInstallationData, content_hash
from tests.helpers import EventTap, wait_until
from tests.integration.test_broker_api import (
    KB,
    KEB,
    KEY,
    Client,
    make_settings,
    raw_docs,
    running,
    settled_docs,
)

TB = "/tekton-broker/api/v1"
PUBLIC = "https://kotc.example.com/base"
PROVISION = {
    "service_id": "tekton",
    "organization_guid": "org-1",
    "parameters": {"cluster": "prod", "namespaces": ["team-b", "team-a", "team-b"], "unknown": 1},
    "service_credentials": "SERVICE-CRED-PLAINTEXT",
}


@pytest.fixture
async def tap(amqp_url: str) -> Any:
    async with EventTap(amqp_url, ("service.#",)) as t:
        yield t


def _local(rt: BrokerRuntime, url: str) -> str:
    """The page's URL on the test's listener (the public base has a path prefix)."""
    return rt.url + urllib.parse.urlsplit(url).path.removeprefix("/base")


async def test_tekton_service_lifecycle_publishes_service_tekton_events(
    mongodb_url: str, amqp_url: str, tap: EventTap
) -> None:
    async with (
        running(make_settings(mongodb_url, amqp_url, broker_public_url=PUBLIC)) as rt,
        aiohttp.ClientSession() as session,
    ):
        c = Client(session, rt.url)
        status, body = await c.call("PUT", f"{TB}/service_instances/tk-1", PROVISION)
        assert status == 200, body
        assert body["parameters"] == {
            "cluster": "prod",
            "namespaces": ["team-a", "team-b"],
            "label": "Tekton on prod (team-a, team-b)",
        }
        assert body["organization_guid"] == "org-1"
        assert body["dashboard_url"].startswith(f"{PUBLIC}/dashboard/tekton/tk-1/"), body
        # An identical PUT (namespaces in another order, duplicated) changes nothing: no event.
        same = {**PROVISION, "parameters": {"cluster": "prod", "namespaces": ["team-a", "team-b"]}}
        assert (await c.call("PUT", f"{TB}/service_instances/tk-1", same))[0] == 200
        bind = {"toolchain_credentials": "TC-PLAINTEXT"}
        assert (await c.call("PUT", f"{TB}/service_instances/tk-1/toolchains/tc-1", bind))[0] == 204
        assert (await c.call("PUT", f"{TB}/service_instances/tk-1/toolchains/tc-1", bind))[0] == 204
        status, body = await c.call(
            "PATCH", f"{TB}/service_instances/tk-1", {"parameters": {"namespaces": None}}
        )
        assert status == 200 and body["parameters"] == {"cluster": "prod", "label": "Tekton on prod"}, body
        # The same sid on a Kabanero broker is another instance.
        assert (await c.call("PATCH", f"{KB}/service_instances/tk-1", {"parameters": {}}))[0] == 404
        msg = {"service_id": "toolchain", "instance_id": "tk-1", "toolchain_id": "tc-1", "payload": {}}
        assert (await c.call("POST", f"{TB}/messaging/accept", msg))[0] == 204
        assert (await c.call("DELETE", f"{TB}/service_instances/tk-1/toolchains/tc-1"))[0] == 204
        assert (await c.call("DELETE", f"{TB}/service_instances/tk-1"))[0] == 204
        assert (await c.call("DELETE", f"{TB}/service_instances/tk-1"))[0] == 204
        events = await tap.wait_for(5)
    assert [(e.routing_key, e.id) for e in events] == [
        ("service.tekton.provisioned", "tekton:tk-1:1"),
        ("service.tekton.bound", "tekton:tk-1:2"),
        ("service.tekton.updated", "tekton:tk-1:3"),
        ("service.tekton.unbound", "tekton:tk-1:4"),
        ("service.tekton.deprovisioned", "tekton:tk-1:5"),
    ]
    data = [ServiceEventData.model_validate(e.data) for e in events]
    assert {d.kind for d in data} == {"tekton"} and {d.scope for d in data} == {"tekton:prod"}
    first, bound, updated = data[0], data[1], data[2]
    assert first.parameters.cluster == "prod" and first.parameters.namespaces == ["team-a", "team-b"]
    assert first.parameters.label == "Tekton on prod (team-a, team-b)"
    assert first.parameters.mirrors("team-a") and not first.parameters.mirrors("other")
    assert first.parameters.namespace == "" and first.parameters.create is False
    assert (
        first.instance_spec is None
        and first.dashboard_url
        and "/dashboard/tekton/tk-1/" in first.dashboard_url
    )
    assert (bound.toolchain_id, bound.toolchains) == ("tc-1", ["tc-1"])
    assert updated.parameters.namespaces is None and updated.parameters.mirrors("anything")
    assert data[-1].deleted and data[-1].toolchains == []
    for event in events:
        assert "PLAINTEXT" not in event.model_dump_json()
    # Credentials encrypted at rest while the service lived, stripped on delete.
    (doc,) = await raw_docs(mongodb_url)
    assert doc["_id"] == "tekton:tk-1" and doc["state"] == "deleted" and doc["service_credentials"] is None
    assert "PLAINTEXT" not in json.dumps(doc, default=str)


async def test_credentials_of_a_tekton_service_are_encrypted_at_rest(mongodb_url: str, amqp_url: str) -> None:
    async with running(make_settings(mongodb_url, amqp_url)) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        status, body = await c.call("PUT", f"{TB}/service_instances/tk-2", {**PROVISION, "parameters": {}})
        assert status == 200 and body["parameters"] == {"cluster": "default", "label": "Tekton on default"}
        # Without BROKER_PUBLIC_URL: TEKTON_DASHBOARD_URL_PATTERN (the Tekton Dashboard's usual Route).
        assert body["dashboard_url"] == "https://tekton-dashboard-tekton-pipelines.apps.default.example.com/"
        bind = {"toolchain_credentials": "TC-PLAINTEXT"}
        assert (await c.call("PUT", f"{TB}/service_instances/tk-2/toolchains/t", bind))[0] == 204
    (doc,) = await raw_docs(mongodb_url)
    assert "PLAINTEXT" not in json.dumps(doc, default=str)
    f = Fernet(KEY.encode())
    assert f.decrypt(doc["service_credentials"].encode()) == b"SERVICE-CRED-PLAINTEXT"
    assert f.decrypt(doc["toolchains"][0]["credentials"].encode()) == b"TC-PLAINTEXT"


def _put(params: Any) -> dict[str, Any]:
    return {"service_id": "tekton", "parameters": params}


BAD: list[tuple[str, Any, str]] = [
    ("PUT", _put({"cluster": "elsewhere"}), "'parameters.cluster' is not a configured cluster"),
    ("PUT", _put({"cluster": ""}), "'parameters.cluster'"),
    (
        "PUT",
        _put({"namespaces": []}),
        "'parameters.namespaces' Value error, must name at least one namespace",
    ),
    ("PUT", _put({"namespaces": "team-a"}), "'parameters.namespaces'"),
    ("PUT", _put({"namespaces": ["Bad_NS"]}), "'parameters.namespaces.0'"),
    ("PUT", _put({"namespaces": ["ok", "x" * 64]}), "'parameters.namespaces.1'"),
    ("PUT", _put({"namespaces": [f"ns-{i}" for i in range(101)]}), "'parameters.namespaces'"),
    ("PUT", _put({"namespaces": [3]}), "'parameters.namespaces.0'"),
    ("PUT", _put({"namespace": "team-a"}), "'parameters.namespace' does not apply"),
    ("PUT", _put({"name": "k"}), "'parameters.name' does not apply"),
    ("PUT", _put({"events": "auto"}), "'parameters.events' does not apply"),
    ("PUT", _put({"create": True}), "'parameters.create' does not apply"),
    ("PUT", _put({"create": False}), "'parameters.create' does not apply"),
    ("PUT", _put({"instance": {}}), "'parameters.instance' does not apply"),
    ("PUT", {"service_id": "kabanero"}, "'service_id' does not match this broker (expected 'tekton')"),
    ("PATCH", {"parameters": {"cluster": "elsewhere"}}, "'parameters.cluster'"),
    ("PATCH", {"parameters": {"namespaces": []}}, "'parameters.namespaces'"),
    ("PATCH", {"parameters": {"namespace": "team-a"}}, "'parameters.namespace' does not apply"),
    ("PATCH", {"service_id": "kabanero-events"}, "'service_id' does not match"),
]


@pytest.mark.parametrize(("method", "body", "fragment"), BAD, ids=[f"{m}-{f[:30]}" for m, _, f in BAD])
async def test_bad_tekton_parameters_are_a_400_naming_the_field_and_change_nothing(
    mongodb_url: str, amqp_url: str, method: str, body: Any, fragment: str
) -> None:
    async with (
        running(make_settings(mongodb_url, amqp_url)) as rt,
        aiohttp.ClientSession() as session,
        EventTap(amqp_url, ("#",)) as tap,
    ):
        c = Client(session, rt.url)
        assert (await c.call("PUT", f"{TB}/service_instances/ok", _put({"namespaces": ["team-a"]})))[0] == 200
        await tap.wait_for(1)
        before = await settled_docs(mongodb_url)
        sid = "ok" if method == "PATCH" else "new"
        status, answer = await c.call(method, f"{TB}/service_instances/{sid}", body)
        assert status == 400, answer
        assert fragment in answer["description"], answer
        assert await raw_docs(mongodb_url) == before
        # A marker after the refused call: once it is seen, the refused call published nothing.
        await c.call("PUT", f"{TB}/service_instances/marker", _put({}))
        await tap.wait_for(2)
    assert [e.subject for e in tap.events] == ["ok", "marker"]


async def test_null_values_of_the_refused_keys_are_absent_keys(mongodb_url: str, amqp_url: str) -> None:
    """A form that sends every key, unset ones null, is accepted (OTC may send nulls)."""
    async with running(make_settings(mongodb_url, amqp_url)) as rt, aiohttp.ClientSession() as session:
        nulls = dict.fromkeys(("namespace", "name", "events", "create", "instance", "namespaces"))
        status, body = await Client(session, rt.url).call(
            "PUT", f"{TB}/service_instances/n", _put({**nulls, "cluster": None})
        )
        assert status == 200 and body["parameters"] == {"cluster": "default", "label": "Tekton on default"}


async def _queue_exists(amqp_url: str, name: str) -> bool:
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        return True
    finally:
        await conn.close()


async def test_a_tekton_only_deployment_serves_only_the_tekton_broker(
    mongodb_url: str, amqp_url: str
) -> None:
    settings = make_settings(mongodb_url, amqp_url, brokers="tekton-broker", broker_public_url=PUBLIC)
    async with running(settings) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        for root in (KB, KEB):
            status, answer = await c.call("PUT", f"{root}/service_instances/x", {"service_id": "kabanero"})
            assert (status, answer) == (404, {"description": "not found: no such route"}), root
            assert (await c.call("DELETE", f"{root}/service_instances/x"))[0] == 404
        status, body = await c.call("PUT", f"{TB}/service_instances/t", _put({"cluster": "prod"}))
        assert status == 200 and body["parameters"]["label"] == "Tekton on prod"
        _, st = await c.call("GET", "/status", auth=None)
        assert st["brokers"] == ["tekton-broker"]
        _, spec = await c.call("GET", "/openapi.json", auth=None)
        roots = {p.split("/")[1] for p in spec["paths"] if "/api/v1/" in p}
        assert roots == {"tekton-broker"}
        assert "/dashboard/tekton/{sid}/{token}" in spec["paths"]
        assert "/dashboard/{sid}/{token}" not in spec["paths"]  # the Kabanero page is not served
        assert "ProvisionRequest_kabanero" not in spec["components"]["schemas"]
        assert (await c.call("GET", "/dashboard/x/y", auth=None))[0] == 404
        # Documented routes are exactly the served ones.
        documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
        served = {
            (r.method, r.resource.canonical)
            for r in rt.app.router.routes()
            if r.method != "HEAD" and r.resource is not None
        }
        assert served <= documented, served - documented
        # Its queues: the Tekton installations', not the Kabanero watchers' owned-instance queues.
        assert await _queue_exists(amqp_url, "broker-api.tekton")
        for cluster in ("default", "prod"):
            assert not await _queue_exists(amqp_url, owned_instances_queue(cluster)), cluster


async def test_the_default_deployment_serves_all_three_brokers(mongodb_url: str, amqp_url: str) -> None:
    async with running(make_settings(mongodb_url, amqp_url)) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        _, st = await c.call("GET", "/status", auth=None)
        assert st["brokers"] == ["kabanero-broker", "kabanero-events-broker", "tekton-broker"]
        assert await _queue_exists(amqp_url, owned_instances_queue("prod"))
        settings = make_settings(mongodb_url, amqp_url, brokers="kabanero-broker")
    async with running(settings) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        assert (await c.call("PUT", f"{TB}/service_instances/x", _put({})))[0] == 404
        assert (await c.call("GET", "/dashboard/tekton/x/y", auth=None))[0] == 404
        assert (await c.call("PUT", f"{KB}/service_instances/x", {"service_id": "kabanero"}))[0] == 200


# --- the service's page ----------------------------------------------------------------------


def installation(
    revision: int, *, cluster: str = "prod", found: bool = True, **kw: Any
) -> TektonInstallationData:
    fields: dict[str, Any] = {
        "cluster": cluster,
        "found": found,
        "reason": "OpenShift Pipelines operator Config 'cluster'" if found else "no Tekton Pipelines found",
        "revision": revision,
        "content_hash": content_hash({"r": revision}),
    }
    if found:
        fields |= {
            "pipelines_version": "v0.11.3",
            "triggers_version": "v0.4.0",
            "controller_namespace": "openshift-pipelines",
            "detected_by": "config.operator.tekton.dev/cluster",
            "dashboard_url": "https://tekton-dashboard.apps.prod.example.com/",
            "cards": {"team-a": 3, "team-b": 4, "other": 10},
            "last_change": "created team-a/Pipeline/build-<b>",
            "last_change_at": datetime(2026, 12, 6, 12, 0, tzinfo=UTC),
        }
    return TektonInstallationData(**(fields | kw))


async def publish(amqp_url: str, data: TektonInstallationData) -> None:
    event = CloudEvent.for_data(
        RoutingKeys.TEKTON_INSTALLATION,
        data,
        source="/test/kabanero-watcher",
        subject=data.cluster,
        id=f"tekton-installation:{data.cluster}:{data.revision}",
    )
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        await exchange.publish(to_message(event), routing_key=event.routing_key, mandatory=True)
    finally:
        await conn.close()


async def handled(rt: BrokerRuntime) -> float:
    """Messages of ``broker-api.tekton`` acknowledged, as broker-api's /metrics says."""
    async with aiohttp.ClientSession() as session, session.get(rt.url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kotc_messages_total" and s.labels == {"queue": "broker-api.tekton", "outcome": "ack"}
    )


async def page(session: aiohttp.ClientSession, url: str, accept: str = "application/json") -> tuple[int, Any]:
    async with session.get(url, headers={"Accept": accept}) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        if r.status == 200:
            assert r.headers["Cache-Control"] == "no-store" and r.headers["Referrer-Policy"] == "no-referrer"
            assert r.headers["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'"
        return r.status, body


async def test_the_page_shows_the_installation_of_the_services_cluster(
    mongodb_url: str, amqp_url: str
) -> None:
    settings = make_settings(mongodb_url, amqp_url, broker_public_url=PUBLIC)
    async with running(settings) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        status, some = await c.call(
            "PUT",
            f"{TB}/service_instances/tk-a",
            {**PROVISION, "parameters": {"cluster": "prod", "namespaces": ["team-a", "team-b", "absent"]}},
        )
        assert status == 200
        status, every = await c.call("PUT", f"{TB}/service_instances/tk-all", _put({"cluster": "prod"}))
        assert status == 200
        bind = {"toolchain_credentials": "TC-PLAINTEXT"}
        assert (await c.call("PUT", f"{TB}/service_instances/tk-a/toolchains/toolchain-id-1", bind))[0] == 204
        some_url, every_url = _local(rt, some["dashboard_url"]), _local(rt, every["dashboard_url"])

        status, shown = await page(session, some_url)
        assert status == 200 and shown["installation"] is None, shown
        assert shown["summary"] == "the watcher of cluster prod has not reported yet"
        assert (shown["cluster"], shown["namespaces"]) == ("prod", ["absent", "team-a", "team-b"])
        status, html = await page(session, some_url, accept="text/html,*/*")
        assert status == 200 and "the watcher of cluster prod has not reported yet" in html

        await publish(amqp_url, installation(2))
        await publish(amqp_url, installation(5, cluster="default", found=False, reason="other cluster"))

        async def revision_is(url: str, want: int) -> bool:
            inst = (await page(session, url))[1]["installation"]
            return inst is not None and inst["revision"] == want

        await wait_until(lambda: revision_is(some_url, 2), timeout=15, what="the installation shown")
        _, shown = await page(session, some_url)
        inst = shown["installation"]
        assert inst["cards"] == 7  # team-a + team-b; "absent" has none; "other" is not mirrored
        assert (await page(session, every_url))[1]["installation"]["cards"] == 17
        assert (
            shown["summary"]
            == "Tekton Pipelines v0.11.3, Triggers v0.4.0 in namespace openshift-pipelines on cluster prod"
        )
        assert inst["dashboard_url"] == "https://tekton-dashboard.apps.prod.example.com/"
        assert inst["detected_by"] == "config.operator.tekton.dev/cluster"
        assert inst["last_change"] == "created team-a/Pipeline/build-<b>"
        assert inst["last_change_at"].startswith("2026-12-06T12:00")
        status, html = await page(session, some_url, accept="text/html")
        assert status == 200 and "v0.11.3" in html and "openshift-pipelines" in html
        assert "build-&lt;b&gt;" in html and "build-<b>" not in html
        assert "<script" not in html and "href='https://tekton-dashboard.apps.prod.example.com/'" in html

        # An older revision and a repeat change nothing (both handled: the ack count says so).
        acked = await handled(rt)
        await publish(amqp_url, installation(1, found=False))
        await publish(amqp_url, installation(2, pipelines_version="v9"))
        await wait_until(lambda: _acked_at_least(rt, acked + 2), timeout=15, what="stale reports handled")
        assert (await page(session, some_url))[1] == shown

        # A newer report: none found, and why; a dashboard URL that is no http(s) URL is no link.
        await publish(
            amqp_url, installation(3, found=False, reason="no tekton-pipelines-controller Deployment")
        )
        await wait_until(lambda: revision_is(some_url, 3), timeout=15, what="not found shown")
        _, shown = await page(session, some_url)
        assert shown["summary"] == (
            "no Tekton installation found in cluster prod: no tekton-pipelines-controller Deployment"
        )
        assert shown["installation"]["found"] is False and shown["installation"]["cards"] == 0
        _, html = await page(session, some_url, accept="text/html")
        assert "no Tekton installation found in cluster prod" in html
        await publish(amqp_url, installation(4, dashboard_url="javascript:alert(1)"))
        await wait_until(lambda: revision_is(some_url, 4), timeout=15, what="revision 4")
        _, shown = await page(session, some_url)
        assert shown["installation"]["dashboard_url"] is None
        _, html = await page(session, some_url, accept="text/html")
        assert "javascript:" not in html

        for text in (html, json.dumps(shown)):
            assert "PLAINTEXT" not in text and "s3cret" not in text and KEY not in text
            assert "SERVICE-CRED" not in text
        # Its own toolchain is shown (its tools are grouped by it); another service's never is.
        assert shown["tools"]["toolchains"] == ["toolchain-id-1"]
        _, other = await page(session, every_url)
        _, other_html = await page(session, every_url, accept="text/html")
        for text in (other_html, json.dumps(other)):
            assert "toolchain-id-1" not in text


async def _acked_at_least(rt: BrokerRuntime, count: float) -> bool:
    return await handled(rt) >= count


async def test_a_wrong_token_an_unknown_sid_and_another_kinds_token_are_the_same_404(
    mongodb_url: str, amqp_url: str
) -> None:
    settings = make_settings(mongodb_url, amqp_url, broker_public_url=PUBLIC)
    async with running(settings) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        status, tekton = await c.call("PUT", f"{TB}/service_instances/same", _put({}))
        assert status == 200
        kabanero_body = {"service_id": "kabanero", "parameters": {"create": True}}
        status, kabanero = await c.call("PUT", f"{KB}/service_instances/same", kabanero_body)
        assert status == 200
        t_token = tekton["dashboard_url"].rsplit("/", 1)[1]
        k_token = kabanero["dashboard_url"].rsplit("/", 1)[1]
        assert t_token != k_token
        assert (await page(session, _local(rt, tekton["dashboard_url"])))[0] == 200
        for path in (
            f"/dashboard/tekton/same/{'A' * len(t_token)}",
            f"/dashboard/tekton/same/{k_token}",  # the Kabanero service's token opens no Tekton page
            f"/dashboard/same/{t_token}",  # and the other way round
            f"/dashboard/tekton/unknown/{t_token}",
            f"/dashboard/tekton/a%20b/{t_token}",
        ):
            status, err = await page(session, rt.url + path)
            assert (status, err) == (404, {"description": "no such dashboard"}), path
