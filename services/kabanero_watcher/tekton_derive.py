"""Pure derivation for the Tekton family: which installation a cluster has, and the card of each
Pipeline and EventListener (docs/design.md, "Tekton semantics"; docs/reference/tekton.md).

The installation is found as Tekton's own tools find it, in this order: the OpenShift Pipelines
operator's ``Config`` ``cluster`` (what Kabanero 0.6-0.9 installed and read), tektoncd/operator's
``TektonConfig`` ``config`` and ``TektonPipeline``, the ``pipelines-info`` ConfigMap (tkn), then the
controller Deployment's labels (the Tekton Dashboard's probe). A card holds only what its user
needs and what the object's spec says: status, resourceVersion and annotations never reach it, so
they never cost an OTC write.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from shared.events import TektonCardData, TektonCardKey, content_hash

Obj = Mapping[str, Any]

CONTROLLER_SELECTOR = "app.kubernetes.io/component=controller"
DASHBOARD_SERVICE = "tekton-dashboard"
# The Triggers release each OpenShift Pipelines operator payload shipped (docs/reference/tekton.md
# §1.1: openshift/tektoncd-pipeline-operator deploy/resources/<v>/addons/...triggers-<v>.yaml).
OPENSHIFT_TRIGGERS = {"v0.10.1": "v0.2.1", "v0.11.3": "v0.4.0"}
_IMAGE_TAG = re.compile(r"tektoncd-pipeline-controller:(v?[0-9][\w.\-]*)")


class Malformed(ValueError):
    """A Tekton object whose shape does not match its CRD schema: its card stays as published."""


@dataclass(frozen=True)
class Installation:
    """What the cluster's Tekton installation is, as far as the cards care (versions, dashboard)."""

    found: bool
    reason: str
    pipelines_version: str | None = None
    triggers_version: str | None = None
    controller_namespace: str | None = None
    detected_by: str | None = None
    dashboard_url: str | None = None


@dataclass
class InstallationObjects:
    """The objects detection reads (all few, cluster-wide or in the install namespaces)."""

    openshift_configs: Sequence[Obj] = ()
    tekton_configs: Sequence[Obj] = ()
    tekton_pipelines: Sequence[Obj] = ()
    config_maps: Sequence[Obj] = ()
    deployments: Sequence[Obj] = ()
    routes: Sequence[Obj] = ()
    ingresses: Sequence[Obj] = ()
    pipelines_served: str | None = None
    """The group/version Pipelines are served in (None: no Pipeline CRD)."""
    searched: Sequence[str] = field(default_factory=tuple)
    """The namespaces searched for controllers and ConfigMaps (said in the reason)."""


def _meta(obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _name(obj: Obj) -> str:
    return str(_meta(obj).get("name") or "")


def _namespace(obj: Obj) -> str:
    return str(_meta(obj).get("namespace") or "")


def _labels(obj: Obj) -> dict[str, Any]:
    labels = _meta(obj).get("labels")
    return labels if isinstance(labels, dict) else {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- the installation --------------------------------------------------------------------------


def detect_installation(
    cluster: str, objs: InstallationObjects, *, dashboard_url: str | None = None
) -> Installation:
    """The installation of ``cluster`` (see the module's docstring for the order of the probes)."""
    dashboard = dashboard_url or dashboard_of(objs.routes, objs.ingresses)
    found = _probe(objs)
    searched = ", ".join(objs.searched) or "-"
    if found is None and objs.pipelines_served is None:
        return Installation(
            found=False,
            reason=f"no Tekton installation found in cluster {cluster}: no Pipeline CRD is served "
            "(tekton.dev), and no OpenShift Pipelines Config 'cluster', TektonConfig, TektonPipeline, "
            f"pipelines-info ConfigMap or controller Deployment was found in {searched}",
            dashboard_url=dashboard,
        )
    if found is None:
        found = Installation(
            found=True,
            reason=f"Pipelines served as {objs.pipelines_served}; the version is not published by any "
            f"operator CR, pipelines-info ConfigMap or controller Deployment in {searched}",
        )
    triggers = found.triggers_version or _triggers_version(objs.config_maps, objs.deployments)
    if triggers is None and found.detected_by == OPENSHIFT_CONFIG:
        triggers = OPENSHIFT_TRIGGERS.get(found.pipelines_version or "")
    return Installation(
        found=True,
        reason=found.reason,
        pipelines_version=found.pipelines_version,
        triggers_version=triggers,
        controller_namespace=found.controller_namespace,
        detected_by=found.detected_by,
        dashboard_url=dashboard,
    )


def _probe(objs: InstallationObjects) -> Installation | None:
    return (
        _from_openshift_config(objs.openshift_configs)
        or _from_operator(objs.tekton_configs, "TektonConfig")
        or _from_operator(objs.tekton_pipelines, "TektonPipeline")
        or _from_config_map(objs.config_maps)
        or _from_deployments(objs.deployments)
    )


OPENSHIFT_CONFIG = "config.operator.tekton.dev/cluster"


def _from_openshift_config(configs: Iterable[Obj]) -> Installation | None:
    """OpenShift Pipelines 0.10-0.11: ``Config`` ``cluster``; its first condition carries the code
    and version, as the Kabanero operator reads them (kabaneroplatform/tekton.go)."""
    for config in configs:
        if _name(config) != "cluster":
            continue
        conditions = _dict(config.get("status")).get("conditions")
        first = _dict(conditions[0]) if isinstance(conditions, list) and conditions else {}
        code = _text(first.get("code")) or "unknown"
        return Installation(
            found=True,
            reason=f"OpenShift Pipelines operator Config 'cluster' ({code})",
            pipelines_version=_text(first.get("version")),
            controller_namespace=_text(_dict(config.get("spec")).get("targetNamespace"))
            or "openshift-pipelines",
            detected_by=OPENSHIFT_CONFIG,
        )
    return None


def _from_operator(crs: Iterable[Obj], kind: str) -> Installation | None:
    """tektoncd/operator: ``TektonConfig`` ``config`` / ``TektonPipeline`` (``pipeline``, or
    ``cluster`` in early releases), ``spec.targetNamespace`` and ``status.version``."""
    for cr in sorted(crs, key=lambda c: _name(c) not in ("config", "pipeline", "cluster")):
        return Installation(
            found=True,
            reason=f"tektoncd/operator {kind} '{_name(cr)}'",
            pipelines_version=_text(_dict(cr.get("status")).get("version")),
            controller_namespace=_text(_dict(cr.get("spec")).get("targetNamespace")) or "tekton-pipelines",
            detected_by=f"{kind.lower()}s.operator.tekton.dev/{_name(cr)}",
        )
    return None


def _from_config_map(config_maps: Iterable[Obj]) -> Installation | None:
    """Pipelines 0.25+: ``pipelines-info`` ``data.version`` (what tkn reads first)."""
    for cm in config_maps:
        if _name(cm) == "pipelines-info" and (version := _text(_dict(cm.get("data")).get("version"))):
            return Installation(
                found=True,
                reason=f"ConfigMap pipelines-info in {_namespace(cm)}",
                pipelines_version=version,
                controller_namespace=_namespace(cm),
                detected_by=f"configmaps/{_namespace(cm)}/pipelines-info",
            )
    return None


def _is_pipelines_controller(labels: Mapping[str, Any]) -> bool:
    return labels.get("app.kubernetes.io/component") == "controller" and (
        labels.get("app.kubernetes.io/name") == "tekton-pipelines"
        or labels.get("app.kubernetes.io/part-of") == "tekton-pipelines"
    )


def _from_deployments(deployments: Iterable[Obj]) -> Installation | None:
    """The controller Deployment (the Dashboard's and tkn's fallback): its release label, its
    ``version`` label, its pod template's annotation, or the controller image's tag."""
    for dep in deployments:
        labels = _labels(dep)
        if not _is_pipelines_controller(labels):
            continue
        version = _release(dep, "pipeline.tekton.dev/release") or _image_tag(dep)
        return Installation(
            found=True,
            reason=f"controller Deployment {_name(dep)} in {_namespace(dep)}",
            pipelines_version=version,
            controller_namespace=_namespace(dep),
            detected_by=f"deployments/{_namespace(dep)}/{_name(dep)}",
        )
    return None


def _release(dep: Obj, label: str) -> str | None:
    labels = _labels(dep)
    template_meta = _dict(_dict(_dict(dep.get("spec")).get("template")).get("metadata"))
    annotations = _dict(template_meta.get("annotations")) | _dict(template_meta.get("labels"))
    for value in (
        labels.get(label),
        labels.get("version"),
        annotations.get(label),
        annotations.get("tekton.dev/release"),
    ):
        if (text := _text(value)) and text != "devel":
            return text
    return None


def _image_tag(dep: Obj) -> str | None:
    containers = _dict(_dict(_dict(dep.get("spec")).get("template")).get("spec")).get("containers")
    for container in containers if isinstance(containers, list) else []:
        if m := _IMAGE_TAG.search(str(_dict(container).get("image") or "")):
            return m.group(1)
    return None


def _is_triggers_controller(labels: Mapping[str, Any]) -> bool:
    return labels.get("app.kubernetes.io/part-of") == "tekton-triggers" or labels.get(
        "app.kubernetes.io/name"
    ) in ("tekton-triggers", "controller-triggers")


def _triggers_version(config_maps: Iterable[Obj], deployments: Iterable[Obj]) -> str | None:
    """Triggers: ``triggers-info`` ``data.version``, else its controller Deployment's labels."""
    for cm in config_maps:
        if _name(cm) == "triggers-info" and (version := _text(_dict(cm.get("data")).get("version"))):
            return version
    versions = (
        _release(dep, "triggers.tekton.dev/release")
        for dep in deployments
        if _is_triggers_controller(_labels(dep))
    )
    return next((v for v in versions if v), None)


# --- routes and ingresses ------------------------------------------------------------------------


def route_url(route: Obj) -> str | None:
    """``http(s)://host[/path]`` of an OpenShift Route (https when it has TLS)."""
    spec = _dict(route.get("spec"))
    host = _text(spec.get("host"))
    if host is None:
        return None
    scheme = "https" if isinstance(spec.get("tls"), dict) else "http"
    return f"{scheme}://{host}{_text(spec.get('path')) or ''}".rstrip("/")


def route_service(route: Obj) -> str | None:
    to = _dict(_dict(route.get("spec")).get("to"))
    return _text(to.get("name")) if to.get("kind", "Service") == "Service" else None


def ingress_urls(ingress: Obj) -> dict[str, str]:
    """Service name -> the first ``http(s)://host/path`` an Ingress (networking.k8s.io/v1) routes to it."""
    spec = _dict(ingress.get("spec"))
    tls_hosts = {h for t in spec.get("tls") or [] for h in _dict(t).get("hosts") or []}
    out: dict[str, str] = {}
    for rule in spec.get("rules") or []:
        host = _text(_dict(rule).get("host"))
        if host is None:
            continue
        scheme = "https" if host in tls_hosts else "http"
        for service, path in _backends(_dict(rule)):
            out.setdefault(service, f"{scheme}://{host}{path}".rstrip("/"))
    return out


def _backends(rule: dict[str, Any]) -> list[tuple[str, str]]:
    """(Service name, path) of each path of an Ingress rule."""
    out = []
    for path in _dict(rule.get("http")).get("paths") or []:
        path = _dict(path)
        service = _text(_dict(_dict(path.get("backend")).get("service")).get("name"))
        if service:
            out.append((service, _text(path.get("path")) or ""))
    return out


def exposures(routes: Iterable[Obj], ingresses: Iterable[Obj]) -> dict[str, str]:
    """Service name -> external URL, from the Routes then the Ingresses of one namespace (first by name)."""
    out: dict[str, str] = {}
    for route in routes:
        service, url = route_service(route), route_url(route)
        if service and url and service not in out:
            out[service] = url
    for ingress in ingresses:
        for service, url in ingress_urls(ingress).items():
            out.setdefault(service, url)
    return out


def dashboard_of(routes: Iterable[Obj], ingresses: Iterable[Obj]) -> str | None:
    """The Tekton Dashboard: Route ``tekton-dashboard`` (Kabanero's landing page looked it up by
    that name), else whatever Route or Ingress sends to Service ``tekton-dashboard``."""
    routes = list(routes)
    for route in routes:
        if _name(route) == DASHBOARD_SERVICE and (url := route_url(route)):
            return url
    return exposures(routes, ingresses).get(DASHBOARD_SERVICE)


# --- cards ---------------------------------------------------------------------------------------


def _spec(obj: Obj, where: str) -> dict[str, Any]:
    spec = obj.get("spec", {})
    if not isinstance(spec, dict):
        raise Malformed(f"{where}.spec: expected an object, got {type(spec).__name__}")
    return spec


def _named_list(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise Malformed(f"{where}: expected a list of objects")
    return value


def pipeline_tasks(pipeline: Obj) -> list[str]:
    """Task names in order; ``finally`` tasks (Pipelines 0.14+) follow, marked."""
    spec = _spec(pipeline, "Pipeline")
    tasks = [str(t.get("name") or "?") for t in _named_list(spec.get("tasks"), "spec.tasks")]
    return tasks + [
        f"finally {t.get('name') or '?'}" for t in _named_list(spec.get("finally"), "spec.finally")
    ]


def owner_stack(obj: Obj) -> str | None:
    """The Kabanero Stack that activated the object (its ownerReference, kabanero-operator
    utils/pipelines.go), or None."""
    refs = _meta(obj).get("ownerReferences")
    for ref in refs if isinstance(refs, list) else []:
        ref = _dict(ref)
        if ref.get("kind") == "Stack" and str(ref.get("apiVersion", "")).startswith("kabanero.io/"):
            return _text(ref.get("name"))
    return None


_INTERCEPTOR_KINDS = ("webhook", "github", "gitlab", "bitbucket", "cel")


def _interceptors(trigger: dict[str, Any]) -> list[str]:
    """Interceptor kinds of one EventListener trigger: ``v1alpha1`` (Triggers 0.2-0.x) a list of
    objects keyed by kind (webhook, github, gitlab, cel, bitbucket), ``v1beta1`` ``ref.name``
    (ClusterInterceptors); Triggers 0.1's single ``interceptor`` (a webhook) is read too."""
    kinds: list[str] = []
    if isinstance(trigger.get("interceptor"), dict):
        kinds.append("webhook")
    for item in _named_list(trigger.get("interceptors"), "interceptors"):
        ref = _text(_dict(item.get("ref")).get("name"))
        kinds += [ref] if ref else [k for k in _INTERCEPTOR_KINDS if k in item]
    return kinds


def eventlistener_triggers(listener: Obj) -> list[str]:
    """``name (interceptors: a, b)`` per trigger; an unnamed one by its ``triggerRef`` or template."""
    out = []
    for i, trigger in enumerate(
        _named_list(_spec(listener, "EventListener").get("triggers"), "spec.triggers")
    ):
        template = _dict(trigger.get("template"))
        name = (
            _text(trigger.get("name"))
            or _text(trigger.get("triggerRef"))
            or _text(template.get("ref"))
            or _text(template.get("name"))
            or f"#{i + 1}"
        )
        kinds = _interceptors(trigger)
        out.append(f"{name} (interceptors: {', '.join(kinds)})" if kinds else name)
    return out


def _dashboard_link(dashboard: str | None, fragment: str) -> str | None:
    return f"{dashboard.rstrip('/')}/#/{fragment}" if dashboard else None


def pipeline_card(cluster: str, pipeline: Obj, api_version: str, inst: Installation) -> TektonCardData:
    namespace, name = _namespace(pipeline), _name(pipeline)
    selector = quote(f"tekton.dev/pipeline={name}", safe="")
    return _hashed(
        TektonCardData(
            key=TektonCardKey(cluster=cluster, namespace=namespace, kind="Pipeline", name=name),
            api_version=api_version,
            pipelines_version=inst.pipelines_version,
            triggers_version=inst.triggers_version,
            dashboard_url=_dashboard_link(
                inst.dashboard_url, f"namespaces/{quote(namespace)}/pipelineruns?labelSelector={selector}"
            ),
            tasks=pipeline_tasks(pipeline),
            stack=owner_stack(pipeline),
            content_hash="",
            revision=0,
        )
    )


def eventlistener_card(
    cluster: str, listener: Obj, api_version: str, inst: Installation, exposed: Mapping[str, str]
) -> TektonCardData:
    """Triggers creates Service ``el-<name>``; a Route or Ingress to it is the external URL."""
    namespace, name = _namespace(listener), _name(listener)
    return _hashed(
        TektonCardData(
            key=TektonCardKey(cluster=cluster, namespace=namespace, kind="EventListener", name=name),
            api_version=api_version,
            pipelines_version=inst.pipelines_version,
            triggers_version=inst.triggers_version,
            dashboard_url=_dashboard_link(
                inst.dashboard_url, f"namespaces/{quote(namespace)}/eventlisteners/{quote(name)}"
            ),
            external_url=exposed.get(f"el-{name}"),
            triggers=eventlistener_triggers(listener),
            stack=owner_stack(listener),
            content_hash="",
            revision=0,
        )
    )


def _hashed(card: TektonCardData) -> TektonCardData:
    content = card.model_dump(mode="json", exclude={"content_hash", "revision", "deleted"})
    return card.model_copy(update={"content_hash": content_hash(content)})
