"""Tekton in the Kubernetes API emulator, through the real clients: kubernetes_asyncio, raw HTTP and kubectl.

Each release's CRDs (emulators/kube/crds/tekton/, from their public sources) are served in their own
groups and versions; installing or deleting CRDs in a running emulator changes discovery and
list/watch as on a real API server; the built-in kinds that locate an installation list and watch
with label selectors; kubectl applies the published fixtures (tests/fixtures/tekton/) and creates
namespaces and ConfigMaps (sent as protobuf).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from emulators.kube import crd
from emulators.kube.testing import KubeEmulator, client_configuration
from tests.helpers import kubectl_path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tekton"
SAMPLES = ROOT / "deploy" / "samples"
WAIT = 5.0


def pipeline(name: str, api_version: str = "tekton.dev/v1beta1", ns: str = "ci") -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "Pipeline",
        "metadata": {"name": name, "namespace": ns, "labels": {"team": "a"}},
        "spec": {"tasks": [{"name": "build", "taskRef": {"name": "build"}}]},
    }


async def discovery(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as resp:
        return resp.status, await resp.json()


async def groups(http: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
    _, body = await discovery(http, "/apis")
    return {g["name"]: g for g in body["groups"]}


async def resources(http: aiohttp.ClientSession, group: str, version: str) -> dict[str, bool]:
    """plural -> namespaced, for one served group/version."""
    status, body = await discovery(http, f"/apis/{group}/{version}")
    assert status == 200, (group, version, body)
    return {r["name"]: r["namespaced"] for r in body["resources"] if "/" not in r["name"]}


async def next_change(stream: Any) -> Any:
    """The next non-BOOKMARK event of a kubernetes_asyncio watch stream, within WAIT seconds."""
    async with asyncio.timeout(WAIT):
        async for event in stream:
            if event["type"] != "BOOKMARK":
                return event
    raise AssertionError("the watch ended without a change")


@pytest.fixture
async def http_of() -> AsyncIterator[Any]:
    sessions: list[aiohttp.ClientSession] = []

    def open_session(kube: KubeEmulator) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(kube.url)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        await session.close()


# ---------------------------------------------------------------------- each release's groups and versions

# (bundle, group, versions in discovery order (the first is preferred), {version: plurals served there})
RELEASES = [
    (
        "tekton-v0.10.1",
        {
            "tekton.dev": (
                ["v1alpha1"],
                {
                    "v1alpha1": {
                        "pipelines", "tasks", "clustertasks", "pipelineruns", "taskruns",
                        "pipelineresources", "conditions", "eventlisteners", "triggerbindings",
                        "triggertemplates",
                    }
                },
            ),
        },
        ["triggers.tekton.dev"],
    ),
    (
        "tekton-v0.11.3",
        {
            "tekton.dev": (
                ["v1beta1", "v1alpha1"],
                {
                    "v1beta1": {"pipelines", "tasks", "clustertasks", "pipelineruns", "taskruns"},
                    "v1alpha1": {
                        "pipelines", "tasks", "clustertasks", "pipelineruns", "taskruns",
                        "pipelineresources", "conditions",
                    },
                },
            ),
            "triggers.tekton.dev": (
                ["v1alpha1"],
                {"v1alpha1": {"eventlisteners", "triggerbindings", "triggertemplates", "clustertriggerbindings"}},
            ),
        },
        [],
    ),
    (
        "tekton-current",
        {
            "tekton.dev": (
                ["v1", "v1beta1", "v1alpha1"],
                {
                    "v1": {"pipelines", "tasks", "pipelineruns", "taskruns"},
                    "v1beta1": {"pipelines", "tasks", "pipelineruns", "taskruns", "customruns", "stepactions"},
                    "v1alpha1": {"stepactions", "verificationpolicies"},
                },
            ),
            "triggers.tekton.dev": (
                ["v1beta1", "v1alpha1"],
                {
                    "v1beta1": {
                        "eventlisteners", "triggerbindings", "triggertemplates", "clustertriggerbindings",
                        "triggers",
                    },
                    "v1alpha1": {
                        "eventlisteners", "triggerbindings", "triggertemplates", "clustertriggerbindings",
                        "triggers", "interceptors", "clusterinterceptors",
                    },
                },
            ),
        },
        [],
    ),
    ("openshift-pipelines-operator", {"operator.tekton.dev": (["v1alpha1"], {"v1alpha1": {"config"}})}, []),
    (
        "tekton-operator",
        {"operator.tekton.dev": (["v1alpha1"], {"v1alpha1": {"tektonconfigs", "tektonpipelines"}})},
        [],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("bundle", "expected", "absent"), RELEASES, ids=[r[0] for r in RELEASES])
async def test_each_release_serves_its_groups_and_versions(
    bundle: str, expected: dict[str, Any], absent: list[str], http_of: Any
) -> None:
    async with KubeEmulator.running(crds=[bundle], kabanero=False) as kube:
        http = http_of(kube)
        served = await groups(http)
        assert "kabanero.io" not in served and "events.kabanero.io" not in served
        for group in absent:
            assert group not in served
            assert (await discovery(http, f"/apis/{group}"))[0] == 404
        for group, (versions, plurals) in expected.items():
            entry = served[group]
            assert [v["version"] for v in entry["versions"]] == versions
            assert entry["preferredVersion"] == {
                "groupVersion": f"{group}/{versions[0]}",
                "version": versions[0],
            }
            status, body = await discovery(http, f"/apis/{group}")
            assert status == 200 and body["preferredVersion"]["version"] == versions[0]
            for version, names in plurals.items():
                assert set(await resources(http, group, version)) >= names, (group, version)


async def test_tekton_group_clash_and_cluster_scope(http_of: Any) -> None:
    """Triggers 0.2 puts eventlisteners in tekton.dev, 0.4 in triggers.tekton.dev; the operator CRs
    are cluster-scoped and share operator.tekton.dev."""
    async with KubeEmulator.running(
        crds=["tekton-v0.10.1", "openshift-pipelines-operator", "tekton-operator"]
    ) as kube:
        http = http_of(kube)
        assert (await resources(http, "tekton.dev", "v1alpha1"))["eventlisteners"] is True
        operator = await resources(http, "operator.tekton.dev", "v1alpha1")
        assert operator == {"config": False, "tektonconfigs": False, "tektonpipelines": False}
        assert "kabanero.io" in await groups(http)  # the Kabanero CRDs stay unless asked otherwise


async def test_list_and_watch_each_release_with_kubernetes_asyncio() -> None:
    cases = [
        ("tekton-v0.10.1", "tekton.dev", "v1alpha1", "eventlisteners"),
        ("tekton-v0.11.3", "triggers.tekton.dev", "v1alpha1", "eventlisteners"),
        ("tekton-v0.11.3", "tekton.dev", "v1beta1", "pipelines"),
        ("tekton-current", "triggers.tekton.dev", "v1beta1", "eventlisteners"),
        ("tekton-current", "tekton.dev", "v1", "pipelines"),
    ]
    for bundle, group, version, plural in cases:
        async with (
            KubeEmulator.running(crds=[bundle], auto_namespaces=True, bookmark_interval=0.2) as kube,
            client.ApiClient(client_configuration(kube.url)) as api,
        ):
            crs = client.CustomObjectsApi(api)
            listed = await crs.list_cluster_custom_object(group, version, plural)
            assert listed["items"] == []
            kind = "EventListener" if plural == "eventlisteners" else "Pipeline"
            body = {
                "apiVersion": f"{group}/{version}",
                "kind": kind,
                "metadata": {"name": "one"},
                "spec": {},
            }
            async with watch.Watch().stream(
                crs.list_cluster_custom_object,
                group,
                version,
                plural,
                resource_version=listed["metadata"]["resourceVersion"],
                allow_watch_bookmarks=True,
                timeout_seconds=10,
            ) as stream:
                await crs.create_namespaced_custom_object(group, version, "ci", plural, body)
                event = await next_change(stream)
            assert event["type"] == "ADDED", (bundle, plural)
            assert event["object"]["apiVersion"] == f"{group}/{version}"
            assert event["object"]["metadata"]["name"] == "one"


async def test_a_pipeline_written_in_v1beta1_reads_in_v1_on_a_current_install() -> None:
    async with (
        KubeEmulator.running(crds=["tekton-current"], auto_namespaces=True) as kube,
        client.ApiClient(client_configuration(kube.url)) as api,
    ):
        crs = client.CustomObjectsApi(api)
        await crs.create_namespaced_custom_object("tekton.dev", "v1beta1", "ci", "pipelines", pipeline("p"))
        got = await crs.get_namespaced_custom_object("tekton.dev", "v1", "ci", "pipelines", "p")
        assert got["apiVersion"] == "tekton.dev/v1"
        assert got["spec"] == pipeline("p")["spec"]
        listed = await crs.list_cluster_custom_object("tekton.dev", "v1", "pipelines")
        assert [(i["apiVersion"], i["metadata"]["name"]) for i in listed["items"]] == [("tekton.dev/v1", "p")]
        again = await crs.get_namespaced_custom_object("tekton.dev", "v1beta1", "ci", "pipelines", "p")
        assert again["apiVersion"] == "tekton.dev/v1beta1"


async def test_a_write_is_validated_against_the_release_schema() -> None:
    """Pipelines v1.15.0 publishes a structural schema: a wrongly typed field is the API server's 422."""
    async with (
        KubeEmulator.running(crds=["tekton-current"], auto_namespaces=True) as kube,
        client.ApiClient(client_configuration(kube.url)) as api,
    ):
        crs = client.CustomObjectsApi(api)
        bad = pipeline("bad", "tekton.dev/v1") | {"spec": {"tasks": "build"}}
        with pytest.raises(ApiException) as refused:
            await crs.create_namespaced_custom_object("tekton.dev", "v1", "ci", "pipelines", bad)
        assert refused.value.status == 422
        assert "spec.tasks" in json.loads(refused.value.body or b"{}")["message"]
        assert kube.store.list_objects("pipelines.tekton.dev") == []


# ---------------------------------------------------------------------- installed later, removed


async def read_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    while line := await resp.content.readline():
        yield json.loads(line)


async def test_tekton_installed_after_start_is_served_and_its_removal_is_404_again(http_of: Any) -> None:
    async with KubeEmulator.running(auto_namespaces=True, bookmark_interval=30) as kube:
        http = http_of(kube)
        assert "tekton.dev" not in await groups(http)
        for path in ("/apis/tekton.dev", "/apis/tekton.dev/v1beta1", "/apis/tekton.dev/v1beta1/pipelines"):
            assert (await discovery(http, path))[0] == 404, path
        # A watcher that watches CRDs sees Tekton arrive.
        _, crds_list = await discovery(http, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        crd_params = {
            "watch": "1",
            "resourceVersion": crds_list["metadata"]["resourceVersion"],
            "timeoutSeconds": "10",
        }
        async with http.get(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", params=crd_params
        ) as crd_watch:
            async with http.post("/_emulator/install", json={"bundle": "tekton-v0.11.3"}) as resp:
                installed = await resp.json()
            assert "pipelines.tekton.dev" in installed["installed"]
            assert "eventlisteners.triggers.tekton.dev" in installed["crds"]
            async with asyncio.timeout(WAIT):
                first = await anext(read_events(crd_watch))
            assert first["type"] == "ADDED" and first["object"]["kind"] == "CustomResourceDefinition"
            established = {c["type"]: c["status"] for c in first["object"]["status"]["conditions"]}
            assert established["Established"] == "True"

        served = await groups(http)
        assert served["tekton.dev"]["preferredVersion"]["version"] == "v1beta1"
        assert served["triggers.tekton.dev"]["preferredVersion"]["version"] == "v1alpha1"
        status, listed = await discovery(http, "/apis/tekton.dev/v1beta1/pipelines")
        assert status == 200 and listed["items"] == []

        params = {
            "watch": "1",
            "resourceVersion": listed["metadata"]["resourceVersion"],
            "timeoutSeconds": "20",
        }
        async with http.get("/apis/tekton.dev/v1beta1/pipelines", params=params) as stream:
            kube.store.create(pipeline("p"))
            events = read_events(stream)
            async with asyncio.timeout(WAIT):
                added = await anext(events)
            assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "p")
            assert added["object"]["apiVersion"] == "tekton.dev/v1beta1"

            async with http.post("/_emulator/uninstall", json={"bundle": "tekton-v0.11.3"}) as resp:
                assert "pipelines.tekton.dev" in (await resp.json())["deleted"]
            async with asyncio.timeout(WAIT):
                rest = [event async for event in events]  # the stream ends after the deletes
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in rest] == [("DELETED", "p")]

        assert "tekton.dev" not in await groups(http)
        assert (await discovery(http, "/apis/tekton.dev/v1beta1/pipelines"))[0] == 404
        async with http.get("/apis/tekton.dev/v1beta1/pipelines", params={"watch": "1"}) as resp:
            assert resp.status == 404

        # Installed again: served, with no objects (they went with the CRD).
        kube.install("tekton-v0.11.3")
        status, listed = await discovery(http, "/apis/tekton.dev/v1alpha1/pipelines")
        assert status == 200 and listed["items"] == []


async def test_a_crd_posted_over_http_is_checked_and_served(http_of: Any) -> None:
    definition = next(
        d
        for d in crd.bundle("tekton-current")
        if d["metadata"]["name"] == "eventlisteners.triggers.tekton.dev"
    )
    async with KubeEmulator.running() as kube:
        http = http_of(kube)
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        misnamed = definition | {"metadata": {"name": "listeners.triggers.tekton.dev"}}
        async with http.post(path, json=misnamed) as resp:
            assert resp.status == 422
            assert "metadata.name" in (await resp.json())["message"]
        clash = dict(definition)
        clash["metadata"] = {"name": "kabaneros.kabanero.io"}
        clash["spec"] = {
            **definition["spec"],
            "group": "kabanero.io",
            "names": {"plural": "kabaneros", "kind": "Kabanero"},
        }
        async with http.post(path, json=clash) as resp:
            assert resp.status == 409
        assert "triggers.tekton.dev" not in await groups(http)  # refused writes change nothing

        async with http.post(path, json=definition) as resp:
            assert resp.status == 201
            created = await resp.json()
        assert created["status"]["acceptedNames"]["kind"] == "EventListener"
        assert (await groups(http))["triggers.tekton.dev"]["preferredVersion"]["version"] == "v1beta1"
        async with http.delete(f"{path}/eventlisteners.triggers.tekton.dev") as resp:
            assert resp.status == 200
        assert "triggers.tekton.dev" not in await groups(http)


# ---------------------------------------------------------------------- built-in kinds that locate an installation


async def test_deployments_routes_ingresses_and_configmaps_list_and_watch_by_label() -> None:
    seeds = [SAMPLES / "kabanero-sample.yaml", SAMPLES / "tekton-sample.yaml"]
    crds = ["tekton-v0.11.3", "openshift-pipelines-operator"]
    async with (
        KubeEmulator.running(crds=crds, seed=seeds, bookmark_interval=0.2) as kube,
        client.ApiClient(client_configuration(kube.url)) as api,
    ):
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        net, crs = client.NetworkingV1Api(api), client.CustomObjectsApi(api)
        selector = "app.kubernetes.io/component=controller,app.kubernetes.io/name=tekton-pipelines"
        found = await apps.list_deployment_for_all_namespaces(label_selector=selector)
        assert [(d.metadata.namespace, d.metadata.name) for d in found.items] == [
            ("openshift-pipelines", "tekton-pipelines-controller")
        ]
        assert found.items[0].metadata.labels["pipeline.tekton.dev/release"] == "v0.11.3"
        config = await crs.get_cluster_custom_object("operator.tekton.dev", "v1alpha1", "config", "cluster")
        assert config["status"]["conditions"][0] == {"code": "installed", "version": "v0.11.3"}
        dashboard = await crs.get_namespaced_custom_object(
            "route.openshift.io", "v1", "tekton-pipelines", "routes", "tekton-dashboard"
        )
        assert dashboard["spec"]["host"].startswith("tekton-dashboard-tekton-pipelines.")
        routes = await crs.list_cluster_custom_object(
            "route.openshift.io", "v1", "routes", label_selector="eventlistener=listener-b4ef64ab"
        )
        assert [r["spec"]["to"]["name"] for r in routes["items"]] == ["el-listener-b4ef64ab"]
        listener = await crs.get_namespaced_custom_object(
            "triggers.tekton.dev", "v1alpha1", "kabanero", "eventlisteners", "listener-b4ef64ab"
        )
        assert listener["spec"]["triggers"][0]["name"] == "kabanero-push-event"
        service = await core.read_namespaced_service("el-listener-b4ef64ab", "kabanero")
        assert service.spec.ports[0].port == 8080

        # Current Tekton: the pipelines-info ConfigMap, an Ingress to an EventListener, watched by label.
        await core.create_namespaced_config_map(
            "tekton-pipelines",
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="pipelines-info"), data={"version": "v1.15.0"}
            ),
        )
        info = await core.read_namespaced_config_map("pipelines-info", "tekton-pipelines")
        assert info.data == {"version": "v1.15.0"}
        listed = await net.list_ingress_for_all_namespaces(label_selector="eventlistener")
        backend = {"service": {"name": "el-github-listener", "port": {"number": 8080}}}
        async with watch.Watch().stream(
            net.list_ingress_for_all_namespaces,
            label_selector="eventlistener",
            resource_version=listed.metadata.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=10,
        ) as stream:
            for name, labels in (
                ("unrelated", {"app": "x"}),
                ("el-github-listener", {"eventlistener": "github-listener"}),
            ):
                rule = {
                    "host": f"{name}.acme.example",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                }
                kube.store.create(
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "Ingress",
                        "metadata": {"name": name, "namespace": "kabanero", "labels": labels},
                        "spec": {"rules": [rule]},
                    }
                )
            event = await next_change(stream)
        assert event["type"] == "ADDED"
        ingress = event["object"]
        assert ingress.metadata.name == "el-github-listener"
        assert ingress.spec.rules[0].http.paths[0].backend.service.name == "el-github-listener"


# ---------------------------------------------------------------------- the CLI


async def test_cli_installs_a_release_without_kabanero_and_seeds_the_sample(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emulators.kube", "--port", "0", "--tekton", "v0.11.3",
        "--crds", "openshift-pipelines-operator", "--no-kabanero",
        "--seed", str(SAMPLES / "tekton-sample.yaml"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://"), line
        async with aiohttp.ClientSession(url) as http:
            served = await groups(http)
            assert "kabanero.io" not in served
            assert served["tekton.dev"]["preferredVersion"]["version"] == "v1beta1"
            status, listed = await discovery(http, "/apis/tekton.dev/v1beta1/namespaces/kabanero/pipelines")
            assert status == 200
            assert [p["metadata"]["name"] for p in listed["items"]] == [
                "nodejs-express-build-deploy-pl",
                "nodejs-express-build-pl",
            ]
    finally:
        proc.terminate()
        await proc.wait()


# ---------------------------------------------------------------------- kubectl


async def run_kubectl(kubeconfig: Path, home: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        kubectl_path(), "--kubeconfig", str(kubeconfig), "--cache-dir", str(home / "cache"), *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    out, err = await proc.communicate()
    return int(proc.returncode or 0), (out + err).decode()


# (fixture, release bundle, namespace, (plural.group, name) created)
FIXTURE_CASES = [
    ("kabanero-0.6.0-build-deploy-pl.yaml", "tekton-v0.10.1", "kabanero", ("pipelines.tekton.dev", "java-microprofile-build-deploy-pl")),
    ("kabanero-0.6.0-build-deploy-pl-tr.yaml", "tekton-v0.10.1", "kabanero", ("triggertemplates.tekton.dev", "java-microprofile-build-deploy-pl-template")),
    ("triggers-v0.2.1-github-eventlistener-interceptor.yaml", "tekton-v0.10.1", "kabanero", ("eventlisteners.tekton.dev", "github-listener-interceptor")),
    ("kabanero-0.9.1-build-deploy-pl.yaml", "tekton-v0.11.3", "kabanero", ("pipelines.tekton.dev", "java-microprofile-build-deploy-pl")),
    ("kabanero-0.9.1-build-deploy-pl-tr.yaml", "tekton-v0.11.3", "kabanero", ("triggertemplates.triggers.tekton.dev", "java-microprofile-build-deploy-pl-template")),
    ("kabanero-0.9.0-events-event-listener.yaml", "tekton-v0.11.3", "kabanero", ("eventlisteners.triggers.tekton.dev", "listener-b4ef64ab")),
    ("pipeline-v1.15.0-task-timeout-override.yaml", "tekton-current", "ci", ("pipelines.tekton.dev", "taskrun-timeout-override")),
    ("triggers-v0.37.0-github-owners.yaml", "tekton-current", "ci", ("eventlisteners.triggers.tekton.dev", "github-owners-listener")),
]  # fmt: skip


def test_every_fixture_names_its_source_and_is_listed() -> None:
    readme = (FIXTURES / "README.md").read_text()
    files = sorted(p.name for p in FIXTURES.glob("*.yaml"))
    assert files == sorted(case[0] for case in FIXTURE_CASES)
    for name in files:
        assert (FIXTURES / name).read_text().startswith("# source: "), name
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize(
    ("fixture", "bundle", "ns", "created"), FIXTURE_CASES, ids=[c[0] for c in FIXTURE_CASES]
)
async def test_kubectl_applies_each_fixture(
    fixture: str, bundle: str, ns: str, created: tuple[str, str], tmp_path: Path
) -> None:
    async with KubeEmulator.running(crds=[bundle], kabanero=False) as kube:
        for namespace in (ns, "tekton-pipelines"):
            kube.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig", namespace=ns)
        path = str(FIXTURES / fixture)
        code, out = await run_kubectl(kubeconfig, tmp_path, "apply", "-f", path)
        assert code == 0, out
        assert " created" in out and "configured" not in out, out
        resource, name = created
        names = [o["metadata"]["name"] for o in kube.store.list_objects(resource)]
        assert name in names, names
        code, out = await run_kubectl(kubeconfig, tmp_path, "apply", "-f", path)
        assert code == 0 and "created" not in out and "configured" not in out, out  # unchanged
        code, out = await run_kubectl(kubeconfig, tmp_path, "get", resource, "-A", "-o", "name")
        assert code == 0 and name in out, out


async def test_kubectl_create_namespace_and_configmap_send_protobuf_and_succeed(tmp_path: Path) -> None:
    async with KubeEmulator.running() as kube:
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
        code, out = await run_kubectl(kubeconfig, tmp_path, "create", "namespace", "tekton-pipelines", "-v=8")
        assert code == 0, out
        assert "Content-Type: application/vnd.kubernetes.protobuf" in out  # what kubectl really sent
        assert "namespace/tekton-pipelines created" in out
        ns = kube.store.get("namespaces", None, "tekton-pipelines")
        assert ns["spec"] == {"finalizers": ["kubernetes"]} and ns["status"] == {"phase": "Active"}
        assert "generateName" not in ns["metadata"]
        code, out = await run_kubectl(
            kubeconfig, tmp_path, "-n", "tekton-pipelines", "create", "configmap", "pipelines-info",
            "--from-literal=version=v0.11.3",
        )  # fmt: skip
        assert code == 0, out
        assert kube.store.get("configmaps", "tekton-pipelines", "pipelines-info")["data"] == {
            "version": "v0.11.3"
        }
        code, out = await run_kubectl(kubeconfig, tmp_path, "create", "namespace", "tekton-pipelines")
        assert code != 0 and "AlreadyExists" in out, out
        code, out = await run_kubectl(kubeconfig, tmp_path, "delete", "namespace", "tekton-pipelines")
        assert code == 0, out


async def test_kubectl_installs_and_deletes_a_release_of_crds(tmp_path: Path) -> None:
    release = str(ROOT / "emulators" / "kube" / "crds" / "tekton" / "triggers-v0.37.0.yaml")
    async with KubeEmulator.running(auto_namespaces=True) as kube:
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig", namespace="ci")
        code, out = await run_kubectl(kubeconfig, tmp_path, "apply", "-f", release)
        assert code == 0, out
        assert (
            "customresourcedefinition.apiextensions.k8s.io/eventlisteners.triggers.tekton.dev created" in out
        )
        code, out = await run_kubectl(
            kubeconfig, tmp_path, "apply", "-f", str(FIXTURES / "triggers-v0.37.0-github-owners.yaml")
        )
        assert code == 0, out
        code, out = await run_kubectl(kubeconfig, tmp_path, "get", "el")
        assert code == 0 and "github-owners-listener" in out, out
        code, out = await run_kubectl(kubeconfig, tmp_path, "delete", "-f", release)
        assert code == 0, out
        code, out = await run_kubectl(kubeconfig, tmp_path, "get", "eventlisteners.triggers.tekton.dev")
        assert code != 0, out
        assert kube.store.installed_crds() == []
