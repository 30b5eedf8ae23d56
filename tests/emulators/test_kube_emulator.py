"""The Kubernetes API emulator seen through the real clients: kubernetes_asyncio, raw HTTP and kubectl."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from emulators.kube.testing import KubeEmulator, client_configuration
from tests.helpers import kubectl_path

GROUP, VERSION, PLURAL = "kabanero.io", "v1alpha2", "kabaneros"
EVENTS, EVENTS_VERSION = "events.kabanero.io", "v1alpha1"
NS = "kabanero"
WAIT = 5.0
MERGE = "application/merge-patch+json"  # CustomObjectsApi defaults to json-patch for dict bodies


def kabanero(name: str = "kabanero", *, version: str = "0.9.0", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Kabanero",
        "metadata": {"name": name, "namespace": NS, **meta},
        "spec": {"version": version},
    }


@pytest.fixture
async def kube() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator.running(
        auto_namespaces=True, history_window=20, bookmark_interval=0.2
    ) as emulator:
        yield emulator


@pytest.fixture
async def api_client(kube: KubeEmulator) -> AsyncIterator[Any]:
    async with client.ApiClient(client_configuration(kube.url)) as api:
        yield api


@pytest.fixture
def crs(api_client: Any) -> Any:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
async def http(kube: KubeEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(kube.url) as session:
        yield session


async def next_events(stream: Any, count: int, *, skip_bookmarks: bool = True) -> list[tuple[str, Any]]:
    """The next `count` events of a kubernetes_asyncio watch stream, within WAIT seconds."""
    found: list[tuple[str, Any]] = []
    async with asyncio.timeout(WAIT):
        async for event in stream:
            if skip_bookmarks and event["type"] == "BOOKMARK":
                continue
            found.append((event["type"], event["object"]))
            if len(found) == count:
                break
    return found


def status_of(exc: ApiException) -> Any:
    return json.loads(exc.body or b"{}")


def list_kabaneros(crs: Any, **kwargs: Any) -> Any:
    return crs.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, **kwargs)


# ---------------------------------------------------------------------- discovery


async def test_discovery_describes_the_served_types(http: aiohttp.ClientSession) -> None:
    async with http.get("/apis") as resp:
        groups = {g["name"] for g in (await resp.json())["groups"]}
    assert {"kabanero.io", "events.kabanero.io", "coordination.k8s.io"} <= groups
    async with http.get("/apis/kabanero.io/v1alpha2") as resp:
        body = await resp.json()
    by_name = {r["name"]: r for r in body["resources"]}
    assert body["kind"] == "APIResourceList"
    assert by_name["kabaneros"]["kind"] == "Kabanero"
    assert by_name["kabaneros"]["singularName"] == "kabanero"
    assert by_name["kabaneros"]["namespaced"] is True
    assert "watch" in by_name["kabaneros"]["verbs"]
    assert by_name["kabaneros/status"]["verbs"] == ["get", "patch", "update"]
    async with http.get("/api/v1") as resp:
        core = {r["name"]: r for r in (await resp.json())["resources"]}
    assert core["namespaces"]["namespaced"] is False
    assert core["configmaps"]["shortNames"] == ["cm"]
    async with http.get("/version") as resp:
        assert (await resp.json())["major"] == "1"


# ---------------------------------------------------------------------- CRUD through kubernetes_asyncio


async def test_create_list_patch_and_status_semantics(kube: KubeEmulator, crs: Any) -> None:
    created = await crs.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, {**kabanero(), "status": {"ignored": True}}
    )
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"]
    assert "status" not in created  # dropped on create, as with a status subresource

    listed = await crs.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["kabanero"]
    assert int(listed["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])

    patched = await crs.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "kabanero", {"spec": {"version": "0.9.1"}}, _content_type=MERGE
    )
    assert patched["metadata"]["generation"] == 2
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    with_status = await crs.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "kabanero",
        {"status": {"kabaneroInstance": {"ready": "True"}}},
        _content_type=MERGE,
    )
    assert with_status["metadata"]["generation"] == 2
    assert with_status["status"] == {"kabaneroInstance": {"ready": "True"}}
    assert int(with_status["metadata"]["resourceVersion"]) > int(patched["metadata"]["resourceVersion"])

    # PUT on the main resource ignores status; PUT with a stale resourceVersion is a 409 Conflict.
    body = {**with_status, "status": {"kabaneroInstance": {"ready": "False"}}}
    body["metadata"] = {**with_status["metadata"], "labels": {"a": "b"}}
    replaced = await crs.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "kabanero", body)
    assert replaced["status"] == {"kabaneroInstance": {"ready": "True"}}
    assert replaced["metadata"]["generation"] == 2 and replaced["metadata"]["labels"] == {"a": "b"}
    with pytest.raises(ApiException) as conflict:
        await crs.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "kabanero", body)
    assert conflict.value.status == 409
    status = status_of(conflict.value)
    assert status["kind"] == "Status" and status["reason"] == "Conflict"

    with pytest.raises(ApiException) as missing:
        await crs.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "nope")
    assert missing.value.status == 404
    assert status_of(missing.value)["message"] == 'kabaneros.kabanero.io "nope" not found'
    with pytest.raises(ApiException) as exists:
        await crs.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, kabanero())
    assert exists.value.status == 409
    assert status_of(exists.value)["reason"] == "AlreadyExists"

    # A JSON patch that breaks the CRD schema is refused as the API server does; the direct helper
    # with validate=False still stores it (an object the watcher must survive).
    with pytest.raises(ApiException) as invalid:
        await crs.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "kabanero", [{"op": "replace", "path": "/spec", "value": "oops"}]
        )
    assert invalid.value.status == 422
    assert status_of(invalid.value)["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "string": spec in body must be of type object: "string"',
            "field": "spec",
        }
    ]
    assert kube.store.get(PLURAL, NS, "kabanero")["spec"] == {"version": "0.9.1"}
    stored = kube.store.patch(PLURAL, NS, "kabanero", {"spec": "oops"}, validate=False)
    assert stored["spec"] == "oops" and stored["metadata"]["generation"] == 3


async def test_selectors_and_paging(kube: KubeEmulator, crs: Any) -> None:
    for i in range(5):
        kube.store.create(kabanero(f"k{i}", labels={"parity": "even" if i % 2 == 0 else "odd"}))
    even = await list_kabaneros(crs, label_selector="parity=even")
    assert [i["metadata"]["name"] for i in even["items"]] == ["k0", "k2", "k4"]
    notin = await list_kabaneros(crs, label_selector="parity notin (even)")
    assert [i["metadata"]["name"] for i in notin["items"]] == ["k1", "k3"]
    by_name = await crs.list_cluster_custom_object(GROUP, VERSION, PLURAL, field_selector="metadata.name=k3")
    assert [i["metadata"]["name"] for i in by_name["items"]] == ["k3"]

    first = await list_kabaneros(crs, limit=2)
    kube.store.delete(PLURAL, NS, "k3")  # later pages stay consistent with the first page's snapshot
    names = [i["metadata"]["name"] for i in first["items"]]
    token = first["metadata"]["continue"]
    assert first["metadata"]["remainingItemCount"] == 3
    while token:
        page = await list_kabaneros(crs, limit=2, _continue=token)
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == ["k0", "k1", "k2", "k3", "k4"]


async def test_leases_and_configmaps_use_optimistic_concurrency(api_client: Any) -> None:
    leases = client.CoordinationV1Api(api_client)
    body = client.V1Lease(
        metadata=client.V1ObjectMeta(name="kabanero-watcher", namespace=NS),
        spec=client.V1LeaseSpec(holder_identity="pod-a", lease_duration_seconds=15, lease_transitions=0),
    )
    lease = await leases.create_namespaced_lease(NS, body)
    assert lease.spec.holder_identity == "pod-a"
    lease.spec.holder_identity = "pod-b"
    lease.spec.lease_transitions = 1
    taken = await leases.replace_namespaced_lease("kabanero-watcher", NS, lease)
    assert taken.spec.holder_identity == "pod-b"
    lease.spec.holder_identity = "pod-c"
    with pytest.raises(ApiException) as stale:
        await leases.replace_namespaced_lease("kabanero-watcher", NS, lease)  # carries the old RV
    assert stale.value.status == 409

    core = client.CoreV1Api(api_client)
    await core.create_namespaced_config_map(
        NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="gitops-map"), data={"a": "1"})
    )
    patched = await core.patch_namespaced_config_map("gitops-map", NS, {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}
    namespaces = await core.list_namespace()
    assert NS in {n.metadata.name for n in namespaces.items}


# ---------------------------------------------------------------------- watch


async def test_watch_from_list_resource_version(kube: KubeEmulator, crs: Any) -> None:
    kube.store.create(kabanero("before"))
    listed = await list_kabaneros(crs)
    rv = listed["metadata"]["resourceVersion"]
    async with watch.Watch().stream(
        crs.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, resource_version=rv, timeout_seconds=10
    ) as stream:
        kube.store.create(kabanero("after"))
        kube.store.patch(PLURAL, NS, "after", {"spec": {"version": "1.0"}})
        kube.store.delete(PLURAL, NS, "before")
        events = await next_events(stream, 3)
    assert [(t, o["metadata"]["name"]) for t, o in events] == [
        ("ADDED", "after"),
        ("MODIFIED", "after"),
        ("DELETED", "before"),
    ]
    rvs = [int(o["metadata"]["resourceVersion"]) for _, o in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert rvs[-1] == kube.store.resource_version


async def test_watch_without_resource_version_replays_current_state(kube: KubeEmulator, crs: Any) -> None:
    kube.store.create(kabanero("a"))
    kube.store.create(kabanero("b"))
    async with watch.Watch().stream(list_kabaneros, crs, timeout_seconds=10) as stream:
        events = await next_events(stream, 2)
    assert sorted((t, o["metadata"]["name"]) for t, o in events) == [("ADDED", "a"), ("ADDED", "b")]


async def test_bookmarks_carry_the_current_resource_version(kube: KubeEmulator, crs: Any) -> None:
    kube.store.create(kabanero())
    async with watch.Watch().stream(
        list_kabaneros,
        crs,
        allow_watch_bookmarks=True,
        timeout_seconds=10,
        resource_version=str(kube.store.resource_version),
    ) as stream:
        kube.store.create({**kabanero("cm"), "apiVersion": "v1", "kind": "ConfigMap", "spec": None})
        ((kind, obj),) = await next_events(stream, 1, skip_bookmarks=False)
    assert kind == "BOOKMARK"
    assert obj == {
        "kind": "Kabanero",
        "apiVersion": f"{GROUP}/{VERSION}",
        "metadata": {"resourceVersion": str(kube.store.resource_version)},
    }


async def test_timeout_seconds_ends_the_stream(crs: Any) -> None:
    started = time.monotonic()
    async with watch.Watch().stream(list_kabaneros, crs, timeout_seconds=1, resource_version="1") as stream:
        events = [e async for e in stream]
    assert events == []
    assert 0.9 <= time.monotonic() - started < 3


async def test_expired_history_gives_410(kube: KubeEmulator, crs: Any, http: aiohttp.ClientSession) -> None:
    kube.store.create(kabanero())
    old_rv = str(kube.store.resource_version)
    kube.store.patch(PLURAL, NS, "kabanero", {"spec": {"version": "1"}})
    kube.inject("expire")
    # Raw protocol: 200, then one ERROR event with a 410 Status, then the end of the stream.
    async with http.get(
        f"/apis/{GROUP}/{VERSION}/{PLURAL}", params={"watch": "1", "resourceVersion": old_rv}
    ) as resp:
        assert resp.status == 200
        lines = (await resp.read()).decode().splitlines()
    event = json.loads(lines[0])
    assert len(lines) == 1 and event["type"] == "ERROR"
    assert event["object"] == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {old_rv} ({kube.store.resource_version})",
        "reason": "Expired",
        "code": 410,
    }
    # The client turns it into ApiException(410) (after its single retry).
    with pytest.raises(ApiException) as gone:
        async with watch.Watch().stream(list_kabaneros, crs, resource_version=old_rv, timeout_seconds=5) as s:
            await next_events(s, 1)
    assert gone.value.status == 410
    # A list never 410s for an unset / "0" resourceVersion.
    assert (await list_kabaneros(crs, resource_version="0"))["items"]
    # The history window also expires old versions on its own.
    start = str(kube.store.resource_version)
    for i in range(25):
        kube.store.patch(PLURAL, NS, "kabanero", {"metadata": {"labels": {"i": str(i)}}})
    async with http.get(
        f"/apis/{GROUP}/{VERSION}/{PLURAL}", params={"watch": "true", "resourceVersion": start}
    ) as resp:
        assert json.loads(await resp.read())["object"]["code"] == 410


async def test_finalizers_delay_the_delete(kube: KubeEmulator, crs: Any) -> None:
    kube.store.create(kabanero(finalizers=["kabanero.io.kabanero-operator"]))
    rv = str(kube.store.resource_version)
    async with watch.Watch().stream(list_kabaneros, crs, resource_version=rv, timeout_seconds=10) as stream:
        await crs.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "kabanero")
        ((kind, obj),) = await next_events(stream, 1)
        assert kind == "MODIFIED" and obj["metadata"]["deletionTimestamp"]
        still = await crs.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "kabanero")
        assert still["metadata"]["deletionTimestamp"] == obj["metadata"]["deletionTimestamp"]
        await crs.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "kabanero", {"metadata": {"finalizers": None}}, _content_type=MERGE
        )
        ((kind, final),) = await next_events(stream, 1)
    assert kind == "DELETED" and "finalizers" not in final["metadata"]
    assert kube.store.list_objects(PLURAL) == []


# ---------------------------------------------------------------------- faults


async def test_absent_events_crds_are_404_and_leave_discovery(
    kube: KubeEmulator, crs: Any, http: aiohttp.ClientSession
) -> None:
    await crs.list_namespaced_custom_object(EVENTS, EVENTS_VERSION, NS, "eventmediators")
    async with http.post("/_emulator/crds", json={"present": False}) as resp:
        assert (await resp.json())["absentGroups"] == [EVENTS]
    with pytest.raises(ApiException) as absent:
        await crs.list_namespaced_custom_object(EVENTS, EVENTS_VERSION, NS, "eventmediators")
    assert absent.value.status == 404
    async with http.get("/apis") as resp:
        assert EVENTS not in {g["name"] for g in (await resp.json())["groups"]}
    async with http.get(f"/apis/{EVENTS}/{EVENTS_VERSION}") as resp:
        assert resp.status == 404
    kube.inject("crds", present=True)
    await crs.list_cluster_custom_object(EVENTS, EVENTS_VERSION, "eventconnections")


async def test_stall_keeps_the_stream_silent(kube: KubeEmulator, http: aiohttp.ClientSession) -> None:
    rv = str(kube.store.resource_version)
    params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "20"}
    async with http.get(f"/apis/{GROUP}/{VERSION}/{PLURAL}", params=params) as resp:
        async with http.post("/_emulator/stall", json={}) as ctl:
            assert (await ctl.json())["stalled"] == 1
        kube.store.create(kabanero())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await resp.content.readline()
        assert kube.state()["watches"]["stalled"] == 1
        kube.inject("release")
        async with asyncio.timeout(WAIT):
            assert json.loads(await resp.content.readline())["type"] == "ADDED"
        # A stall with a duration ends by itself.
        kube.inject("stall", seconds=0.3)
        kube.store.patch(PLURAL, NS, "kabanero", {"spec": {"x": 1}})
        started = time.monotonic()
        async with asyncio.timeout(WAIT):
            assert json.loads(await resp.content.readline())["type"] == "MODIFIED"
        assert time.monotonic() - started >= 0.25


async def test_drop_aborts_or_closes_streams(kube: KubeEmulator, crs: Any) -> None:
    kube.store.create(kabanero())

    async def dropped_stream(mode: str) -> list[Any]:
        got: list[Any] = []
        async with (
            asyncio.timeout(WAIT),
            watch.Watch().stream(list_kabaneros, crs, timeout_seconds=20) as stream,
        ):
            async for event in stream:
                got.append(event["type"])
                if len(got) == 1:
                    kube.inject("drop", mode=mode)
        return got

    with pytest.raises(aiohttp.ClientPayloadError):
        await dropped_stream("abort")
    assert await dropped_stream("close") == ["ADDED"]
    assert kube.state()["faults"]["dropsInjected"] == 2


async def test_latency_state_and_reset(kube: KubeEmulator, http: aiohttp.ClientSession) -> None:
    kube.store.create(kabanero())
    async with http.post("/_emulator/latency", json={"ms": 200}) as resp:
        assert (await resp.json())["latencyMs"] == 200
    started = time.monotonic()
    async with http.get("/version") as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.19
    async with http.get("/_emulator/state") as resp:
        state = await resp.json()
    assert state["counts"]["kabaneros.kabanero.io"] == 1
    assert state["resourceVersion"] == str(kube.store.resource_version)
    async with http.post("/_emulator/reset") as resp:
        assert resp.status == 200
    assert kube.state()["counts"]["kabaneros.kabanero.io"] == 0
    assert kube.faults.latency_ms == 0


# ---------------------------------------------------------------------- processes


async def test_cli_serves_seeded_objects(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: kabanero}\n---\n"
        "apiVersion: kabanero.io/v1alpha2\nkind: Kabanero\nmetadata: {name: kabanero, namespace: kabanero}\n"
        "spec: {version: 0.9.0}\n---\n"
        "apiVersion: events.kabanero.io/v1alpha1\nkind: EventMediator\n"
        "metadata: {name: webhook, namespace: kabanero}\nspec: {mediations: []}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulators.kube",
        "--port",
        "0",
        "--seed",
        str(seed),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            line = (await proc.stdout.readline()).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        async with (
            aiohttp.ClientSession(url) as session,
            session.get(f"/apis/{EVENTS}/{EVENTS_VERSION}/eventmediators") as resp,
        ):
            items = (await resp.json())["items"]
        assert [i["metadata"]["name"] for i in items] == ["webhook"]
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            assert await proc.wait() == 0


async def test_kubeconfig_loads_in_kubernetes_asyncio(kube: KubeEmulator, tmp_path: Path) -> None:
    kube.store.create(kabanero())
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kube.kubeconfig(tmp_path / "kc")), client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        listed = await client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["kabanero"]


async def run_kubectl(kubeconfig: Path, home: Path, *args: str) -> tuple[int, str]:
    """kubectl against the emulator: (exit code, stdout then stderr)."""
    proc = await asyncio.create_subprocess_exec(
        kubectl_path(),
        "--kubeconfig",
        str(kubeconfig),
        "--cache-dir",
        str(home / "cache"),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HOME": str(home)},
    )
    out, err = await proc.communicate()
    return int(proc.returncode or 0), (out + err).decode()


async def test_kubectl_get_apply_delete(kube: KubeEmulator, tmp_path: Path) -> None:
    kube.store.create(
        kabanero("other", version="0.8.0") | {"metadata": {"name": "other", "namespace": "dev"}}
    )
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
    manifest = tmp_path / "kabanero.yaml"

    async def kubectl(*args: str) -> str:
        code, out = await run_kubectl(kubeconfig, tmp_path, *args)
        assert code == 0, out
        return out

    for version, verb in (("0.9.0", "created"), ("0.9.1", "configured"), ("0.9.1", "unchanged")):
        manifest.write_text(
            f"apiVersion: kabanero.io/v1alpha2\nkind: Kabanero\nmetadata:\n  name: kabanero\n  namespace: {NS}\n"
            f"spec:\n  version: '{version}'\n"
        )
        assert f"kabanero.kabanero.io/kabanero {verb}" in await kubectl("apply", "-f", str(manifest))
    stored = kube.store.get(PLURAL, NS, "kabanero")
    assert stored["spec"] == {"version": "0.9.1"} and stored["metadata"]["generation"] == 2

    table = await kubectl("get", "kabaneros", "-A")
    rows = [line.split()[:2] for line in table.splitlines()[1:]]
    assert rows == [["dev", "other"], [NS, "kabanero"]]

    assert "deleted" in await kubectl("delete", "-f", str(manifest))
    assert [o["metadata"]["name"] for o in kube.store.list_objects(PLURAL)] == ["other"]


async def test_v1alpha1_and_v1alpha2_kabaneros_are_one_object_read_in_either_version(
    kube: KubeEmulator, crs: Any, http: aiohttp.ClientSession
) -> None:
    """kabaneros.kabanero.io serves v1alpha1 and v1alpha2 (storage) with conversion None: an object
    written in one version is read in the other with the same fields; only apiVersion differs."""
    v1 = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "Kabanero",
        "metadata": {"name": "old", "namespace": NS},
        "spec": {
            "version": "0.5.0",
            "collections": {"repositories": [{"name": "central", "url": "https://h/o/r/index.yaml"}]},
        },
    }
    created = await crs.create_namespaced_custom_object(GROUP, "v1alpha1", NS, PLURAL, v1)
    assert created["apiVersion"] == f"{GROUP}/v1alpha1"
    as_v2 = await crs.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "old")
    assert as_v2["apiVersion"] == f"{GROUP}/{VERSION}" and as_v2["spec"] == v1["spec"]
    kube.store.create(kabanero("new"))
    listed = await crs.list_namespaced_custom_object(GROUP, "v1alpha1", NS, PLURAL)
    assert [(i["apiVersion"], i["metadata"]["name"]) for i in listed["items"]] == [
        (f"{GROUP}/v1alpha1", "new"),
        (f"{GROUP}/v1alpha1", "old"),
    ]
    # A v1alpha2 watch sees a v1alpha1 write, in v1alpha2.
    rv = listed["metadata"]["resourceVersion"]
    await crs.patch_namespaced_custom_object(
        GROUP, "v1alpha1", NS, PLURAL, "old", {"spec": {"version": "0.5.1"}}, _content_type=MERGE
    )
    async with watch.Watch().stream(
        crs.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, resource_version=rv, timeout_seconds=2
    ) as stream:
        async for event in stream:
            obj = event["raw_object"]
            assert (event["type"], obj["apiVersion"], obj["spec"]["version"]) == (
                "MODIFIED",
                f"{GROUP}/{VERSION}",
                "0.5.1",
            )
            break
    # Discovery: both versions, v1alpha2 preferred; Stacks exist only in v1alpha2.
    async with http.get(f"/apis/{GROUP}") as r:
        group = await r.json()
    assert [v["version"] for v in group["versions"]] == [VERSION, "v1alpha1"]
    assert group["preferredVersion"]["version"] == VERSION
    async with http.get(f"/apis/{GROUP}/v1alpha1") as r:
        assert [res["name"] for res in (await r.json())["resources"]] == ["kabaneros", "kabaneros/status"]
    async with http.get(f"/apis/{GROUP}/v1alpha1/namespaces/{NS}/stacks") as r:
        assert r.status == 404


async def test_writes_are_validated_against_the_real_crd_schemas(crs: Any) -> None:
    """422 Invalid with the API server's Status: required fields, types, per version."""
    mediator = {
        "apiVersion": f"{EVENTS}/{EVENTS_VERSION}",
        "kind": "EventMediator",
        "metadata": {"name": "webhook", "namespace": NS},
        # The kabanero-io/docs 0.9 example's shape: the `mediation:` wrapper leaves `name` out.
        "spec": {"createListener": "yes", "mediations": [{"mediation": {"name": "webhook"}}]},
    }
    with pytest.raises(ApiException) as refused:
        await crs.create_namespaced_custom_object(EVENTS, EVENTS_VERSION, NS, "eventmediators", mediator)
    assert refused.value.status == 422
    status = status_of(refused.value)
    assert status["reason"] == "Invalid" and status["kind"] == "Status"
    assert status["message"] == (
        'EventMediator.events.kabanero.io "webhook" is invalid: ['
        'spec.createListener: Invalid value: "string": spec.createListener in body must be of type boolean: "string", '
        "spec.mediations[0].name: Required value]"
    )
    assert [(c["reason"], c["field"]) for c in status["details"]["causes"]] == [
        ("FieldValueInvalid", "spec.createListener"),
        ("FieldValueRequired", "spec.mediations[0].name"),
    ]
    assert status["details"]["kind"] == "EventMediator" and status["details"]["group"] == EVENTS
    connections = {
        "apiVersion": f"{EVENTS}/{EVENTS_VERSION}",
        "kind": "EventConnections",
        "metadata": {"name": "c", "namespace": NS},
        "spec": {"connections": [{"from": {"mediator": {"mediation": "m"}}}]},
    }
    with pytest.raises(ApiException) as missing:
        await crs.create_namespaced_custom_object(EVENTS, EVENTS_VERSION, NS, "eventconnections", connections)
    fields = [c["field"] for c in status_of(missing.value)["details"]["causes"]]
    assert fields == ["spec.connections[0].to", "spec.connections[0].from.mediator.name"]
    # An item without a mediator is valid (the CRD does not require one).
    connections["spec"] = {"connections": [{"from": {}, "to": []}]}
    await crs.create_namespaced_custom_object(EVENTS, EVENTS_VERSION, NS, "eventconnections", connections)
    # The v1alpha1 Kabanero schema is not the v1alpha2 one: spec.collections is typed only there.
    bad_v1 = kabanero("old") | {"apiVersion": f"{GROUP}/v1alpha1"}
    bad_v1["spec"] = {"collections": {"repositories": "central"}}
    with pytest.raises(ApiException) as typed:
        await crs.create_namespaced_custom_object(GROUP, "v1alpha1", NS, PLURAL, bad_v1)
    assert [c["field"] for c in status_of(typed.value)["details"]["causes"]] == [
        "spec.collections.repositories"
    ]
    bad_v1["apiVersion"] = f"{GROUP}/{VERSION}"
    await crs.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, bad_v1)  # unknown field, kept


async def test_kubectl_applies_v1alpha1_and_reports_schema_errors(kube: KubeEmulator, tmp_path: Path) -> None:
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
    manifest = tmp_path / "kabanero.yaml"

    async def kubectl(*args: str) -> tuple[int, str]:
        return await run_kubectl(kubeconfig, tmp_path, *args)

    manifest.write_text(
        f"apiVersion: kabanero.io/v1alpha1\nkind: Kabanero\nmetadata:\n  name: kabanero\n  namespace: {NS}\n"
        "spec:\n  collections:\n    repositories:\n    - name: central\n      url: https://h/o/r/i.yaml\n"
    )
    code, out = await kubectl("apply", "-f", str(manifest))
    assert code == 0 and "kabanero.kabanero.io/kabanero created" in out, out
    stored = kube.store.get(PLURAL, NS, "kabanero")
    assert stored["apiVersion"] == f"{GROUP}/{VERSION}" and stored["spec"]["collections"]["repositories"]
    manifest.write_text(
        f"apiVersion: events.kabanero.io/v1alpha1\nkind: EventMediator\nmetadata:\n  name: m\n  namespace: {NS}\n"
        "spec:\n  mediations:\n  - mediation:\n      name: webhook\n"
    )
    code, out = await kubectl("apply", "-f", str(manifest))
    assert code != 0 and "spec.mediations[0].name: Required value" in out, out


async def test_a_missing_namespace_is_404_not_found_unless_implicit_namespaces_are_asked_for() -> None:
    """As a real API server: no implicit namespaces (``--auto-namespaces`` is the opt-in deviation)."""
    body = {**kabanero(), "metadata": {"name": "kabanero", "namespace": "nope"}}
    async with KubeEmulator.running() as kube, client.ApiClient(client_configuration(kube.url)) as api:
        custom = client.CustomObjectsApi(api)
        with pytest.raises(ApiException) as missing:
            await custom.create_namespaced_custom_object(GROUP, VERSION, "nope", PLURAL, body)
        status = json.loads(missing.value.body or "{}")
        assert (missing.value.status, status["kind"], status["reason"]) == (404, "Status", "NotFound")
        assert status["message"] == 'namespaces "nope" not found'
        assert status["details"]["kind"] == "namespaces" and status["details"]["name"] == "nope"
        core = client.CoreV1Api(api)
        await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="nope")))
        created = await custom.create_namespaced_custom_object(GROUP, VERSION, "nope", PLURAL, body)
        assert created["metadata"]["namespace"] == "nope"
    async with (
        KubeEmulator.running(auto_namespaces=True) as kube,
        client.ApiClient(client_configuration(kube.url)) as api,
    ):
        await client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, "nope", PLURAL, body
        )
        assert kube.store.get("namespaces", None, "nope")["metadata"]["name"] == "nope"
