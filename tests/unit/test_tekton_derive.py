"""The Tekton family's pure rules: installation detection, dashboard, cards (docs/design.md,
"Tekton semantics")."""

from __future__ import annotations

from typing import Any

import pytest

from services.kabanero_watcher.tekton_derive import (
    Installation,
    InstallationObjects,
    Malformed,
    dashboard_of,
    detect_installation,
    eventlistener_card,
    eventlistener_triggers,
    exposures,
    pipeline_card,
)

INST = Installation(
    found=True,
    reason="x",
    pipelines_version="v0.11.3",
    triggers_version="v0.4.0",
    dashboard_url="https://dash.apps.example",
)


def obj(kind: str, name: str, namespace: str = "", **fields: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta.update(fields.pop("metadata", {}))
    return {"kind": kind, "metadata": meta, **fields}


def openshift_config(code: str = "installed", version: str = "v0.11.3") -> dict[str, Any]:
    return obj(
        "Config",
        "cluster",
        spec={"targetNamespace": "openshift-pipelines"},
        status={"conditions": [{"code": code, "version": version}]},
    )


def controller(
    namespace: str, labels: dict[str, str], image: str = "gcr.io/x/controller:v1"
) -> dict[str, Any]:
    return obj(
        "Deployment",
        "tekton-pipelines-controller",
        namespace,
        metadata={"labels": labels},
        spec={"template": {"spec": {"containers": [{"image": image}]}}},
    )


# --- the installation ----------------------------------------------------------------------------


def test_openshift_pipelines_config_wins_and_names_triggers_from_the_operator_payload() -> None:
    dep = controller(
        "tekton-pipelines",
        {
            "app.kubernetes.io/component": "controller",
            "app.kubernetes.io/name": "tekton-pipelines",
            "pipeline.tekton.dev/release": "v0.50.0",
        },
    )
    inst = detect_installation(
        "c1",
        InstallationObjects(
            openshift_configs=[openshift_config()], deployments=[dep], pipelines_served="tekton.dev/v1beta1"
        ),
    )
    assert (inst.pipelines_version, inst.triggers_version) == ("v0.11.3", "v0.4.0")
    assert inst.controller_namespace == "openshift-pipelines"
    assert inst.detected_by == "config.operator.tekton.dev/cluster"
    assert "installed" in inst.reason
    old = detect_installation(
        "c1", InstallationObjects(openshift_configs=[openshift_config(version="v0.10.1")])
    )
    assert old.triggers_version == "v0.2.1"


def test_tektonconfig_then_pipelines_info_then_controller_labels() -> None:
    tc = obj(
        "TektonConfig", "config", spec={"targetNamespace": "tekton-pipelines"}, status={"version": "v0.74.0"}
    )
    info = obj("ConfigMap", "pipelines-info", "tekton-pipelines", data={"version": "v0.68.0"})
    triggers = obj("ConfigMap", "triggers-info", "tekton-pipelines", data={"version": "v0.30.0"})
    assert (
        detect_installation(
            "c", InstallationObjects(tekton_configs=[tc], config_maps=[info])
        ).pipelines_version
        == "v0.74.0"
    )
    by_cm = detect_installation("c", InstallationObjects(config_maps=[info, triggers]))
    assert (by_cm.pipelines_version, by_cm.triggers_version) == ("v0.68.0", "v0.30.0")
    assert by_cm.detected_by == "configmaps/tekton-pipelines/pipelines-info"
    new_labels = {
        "app.kubernetes.io/component": "controller",
        "app.kubernetes.io/part-of": "tekton-pipelines",
        "app.kubernetes.io/name": "controller",
        "version": "v0.56.1",
    }
    assert (
        detect_installation(
            "c", InstallationObjects(deployments=[controller("tekton-pipelines", new_labels)])
        ).pipelines_version
        == "v0.56.1"
    )
    # Pipelines 0.10 on OpenShift: no release label ("devel"), the controller image's tag says it.
    old = controller(
        "openshift-pipelines",
        {
            "app.kubernetes.io/component": "controller",
            "app.kubernetes.io/name": "tekton-pipelines",
            "pipeline.tekton.dev/release": "devel",
        },
        image="quay.io/openshift-pipeline/tektoncd-pipeline-controller:v0.10.1",
    )
    found = detect_installation("c", InstallationObjects(deployments=[old]))
    assert (found.pipelines_version, found.controller_namespace) == ("v0.10.1", "openshift-pipelines")


def test_no_installation_says_why_and_where_it_looked() -> None:
    inst = detect_installation(
        "east", InstallationObjects(searched=("tekton-pipelines", "openshift-pipelines"))
    )
    assert not inst.found
    assert inst.reason.startswith("no Tekton installation found in cluster east")
    assert "tekton-pipelines, openshift-pipelines" in inst.reason
    served = detect_installation("east", InstallationObjects(pipelines_served="tekton.dev/v1"))
    assert served.found and served.pipelines_version is None and "tekton.dev/v1" in served.reason


def test_dashboard_from_its_route_or_an_ingress_to_its_service() -> None:
    route = obj(
        "Route",
        "tekton-dashboard",
        "tekton-pipelines",
        spec={"host": "dash.apps.example", "tls": {"termination": "edge"}},
    )
    assert dashboard_of([route], []) == "https://dash.apps.example"
    ingress = obj(
        "Ingress",
        "anything",
        "tekton-pipelines",
        spec={
            "rules": [
                {
                    "host": "tekton.example",
                    "http": {"paths": [{"path": "/", "backend": {"service": {"name": "tekton-dashboard"}}}]},
                }
            ]
        },
    )
    assert dashboard_of([], [ingress]) == "http://tekton.example"
    assert dashboard_of([], []) is None
    configured = detect_installation(
        "c", InstallationObjects(routes=[route]), dashboard_url="https://proxy/tekton"
    )
    assert configured.dashboard_url == "https://proxy/tekton"


# --- cards ---------------------------------------------------------------------------------------


def pipeline(**spec: Any) -> dict[str, Any]:
    return obj(
        "Pipeline",
        "java-build-deploy-pl",
        "kabanero",
        metadata={
            "ownerReferences": [
                {"apiVersion": "kabanero.io/v1alpha2", "kind": "Stack", "name": "java-microprofile"}
            ]
        },
        spec=spec or {"tasks": [{"name": "build"}, {"name": "deploy"}], "finally": [{"name": "notify"}]},
    )


def test_pipeline_card_shows_tasks_stack_versions_and_opens_its_runs() -> None:
    card = pipeline_card("c1", pipeline(), "tekton.dev/v1beta1", INST)
    assert card.key.id == "tekton:c1/kabanero/Pipeline/java-build-deploy-pl"
    assert card.tasks == ["build", "deploy", "finally notify"]
    assert card.stack == "java-microprofile"
    assert (card.pipelines_version, card.api_version) == ("v0.11.3", "tekton.dev/v1beta1")
    assert card.dashboard_url == (
        "https://dash.apps.example/#/namespaces/kabanero/pipelineruns"
        "?labelSelector=tekton.dev%2Fpipeline%3Djava-build-deploy-pl"
    )
    assert pipeline_card("c1", pipeline(), "v", Installation(found=True, reason="x")).dashboard_url is None


def test_status_and_metadata_noise_do_not_change_a_card() -> None:
    first = pipeline_card("c1", pipeline(), "tekton.dev/v1beta1", INST)
    noisy = pipeline()
    noisy["metadata"].update({"resourceVersion": "999", "generation": 7, "annotations": {"x": "y"}})
    noisy["status"] = {"conditions": [{"type": "Ready"}]}
    assert pipeline_card("c1", noisy, "tekton.dev/v1beta1", INST).content_hash == first.content_hash
    changed = pipeline(tasks=[{"name": "build"}])
    assert pipeline_card("c1", changed, "tekton.dev/v1beta1", INST).content_hash != first.content_hash


def test_eventlistener_triggers_of_every_release() -> None:
    triggers_0_1 = obj(
        "EventListener", "el", "ns", spec={"triggers": [{"name": "t", "interceptor": {"header": []}}]}
    )
    assert eventlistener_triggers(triggers_0_1) == ["t (interceptors: webhook)"]
    triggers_0_4 = obj(
        "EventListener",
        "listener-8b1f",
        "ns",
        spec={
            "triggers": [
                {"name": "push", "interceptors": [{"github": {}}, {"cel": {"filter": "x"}}]},
                {"template": {"name": "tpl"}},
            ]
        },
    )
    assert eventlistener_triggers(triggers_0_4) == ["push (interceptors: github, cel)", "tpl"]
    current = obj(
        "EventListener",
        "el",
        "ns",
        spec={
            "triggers": [
                {"triggerRef": "ref-only"},
                {"name": "pr", "interceptors": [{"ref": {"name": "github"}}]},
            ]
        },
    )
    assert eventlistener_triggers(current) == ["ref-only", "pr (interceptors: github)"]


def test_eventlistener_card_shows_the_route_or_ingress_of_its_service() -> None:
    el = obj("EventListener", "webhooks", "team", spec={"triggers": []})
    route = obj(
        "Route",
        "el-webhooks",
        "team",
        spec={"host": "hooks.example", "to": {"kind": "Service", "name": "el-webhooks"}, "tls": {}},
    )
    exposed = exposures([route], [])
    card = eventlistener_card("c1", el, "triggers.tekton.dev/v1alpha1", INST, exposed)
    assert card.external_url == "https://hooks.example"
    assert card.dashboard_url == "https://dash.apps.example/#/namespaces/team/eventlisteners/webhooks"
    ingress = obj(
        "Ingress",
        "i",
        "team",
        spec={
            "tls": [{"hosts": ["in.example"]}],
            "rules": [
                {
                    "host": "in.example",
                    "http": {"paths": [{"path": "/hooks", "backend": {"service": {"name": "el-webhooks"}}}]},
                }
            ],
        },
    )
    assert (
        eventlistener_card("c1", el, "v", INST, exposures([], [ingress])).external_url
        == "https://in.example/hooks"
    )
    assert eventlistener_card("c1", el, "v", INST, {}).external_url is None


def test_a_malformed_object_raises_so_its_card_is_kept_as_published() -> None:
    with pytest.raises(Malformed):
        pipeline_card("c", obj("Pipeline", "p", "ns", spec={"tasks": "build"}), "v", INST)
    with pytest.raises(Malformed):
        eventlistener_card("c", obj("EventListener", "e", "ns", spec=["x"]), "v", INST, {})
