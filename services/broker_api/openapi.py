"""OpenAPI 3.1 document generated from the pydantic models (served at ``/openapi.json``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.broker_api.dashboard import EVENTS_ROUTE, DashboardView
from services.broker_api.dashboard import ROUTE as DASHBOARD_ROUTE
from services.broker_api.kinds import RULES
from services.broker_api.models import (
    BROKERS,
    ID_PATTERN,
    BindRequest,
    ErrorBody,
    InstanceResponse,
    MessageRequest,
    ProvisionRequest,
    StatusResponse,
    UpdateRequest,
    VersionResponse,
)
from services.broker_api.routes import BROKER_OPS, PER_BROKER, Op
from services.broker_api.tekton_page import ROUTE as TEKTON_ROUTE
from services.broker_api.tekton_page import TektonDashboardView
from shared.events import ServiceKind

BROKER_ROOTS = tuple(BROKERS)
_ERRORS = {
    400: "bad input: malformed JSON, wrong types, missing or mismatched field, bad id",
    401: "missing or wrong HTTP Basic credentials",
    404: "unknown service instance, or no such route",
    405: "method not allowed on this route",
    408: "request body not received in time",
    413: "body over 64 KiB",
    429: "too many failed authentications from this client; retry after 'Retry-After' seconds",
    503: "storage unavailable; retry",
}
# Every authenticated operation reads a body (408) and throttles failed authentication (429).
_AUTH_ERRORS = (408, 429)


def _page_op(path: str, summary: str, view: type[BaseModel]) -> Op:
    """A service's own page: no credentials (the URL's token is the capability), HTML or JSON."""
    return Op(
        "get",
        path,
        f"{summary}; HTML, or JSON with Accept: application/json. No credentials: the URL's token "
        "is the capability",
        200,
        response=view,
        auth=False,
        errors=(400, 404),
        notes={
            400: "'page' is not a positive integer",
            404: "unknown service instance, or a wrong token (the same answer)",
        },
    )


PAGE_PARAMETER: dict[str, Any] = {
    "name": "page",
    "in": "query",
    "required": False,
    "description": "the page of the service's tools (problems first, 100 per page); 400 if not a positive integer",
    "schema": {"type": "integer", "minimum": 1, "default": 1},
}
# The services' own pages, each served with the broker whose services have one.
PAGE_OPS: dict[str, Op] = {
    "kabanero-broker": _page_op(
        DASHBOARD_ROUTE,
        "A Kabanero service's page (dashboard_url): what it stands for, the cluster side's outcome "
        "when it creates its instance, and the tools kept in its toolchains with their sync state",
        DashboardView,
    ),
    "kabanero-events-broker": _page_op(
        EVENTS_ROUTE,
        "A Kabanero Events service's page (dashboard_url): what it stands for and the tools kept in its "
        "toolchains with their sync state",
        DashboardView,
    ),
    "tekton-broker": _page_op(
        TEKTON_ROUTE,
        "A Tekton service's page (dashboard_url): the installation the watcher of its cluster found, and "
        "the cards kept in its toolchains with their sync state",
        TektonDashboardView,
    ),
}
ROOT_OPS = (
    Op(
        "get",
        "/status",
        "Service status (always 200; 'warn' when a dependency is down)",
        200,
        response=StatusResponse,
        auth=False,
        errors=(),
    ),
    Op("get", "/version", "Build version", 200, response=VersionResponse, auth=False, errors=()),
    Op("get", "/openapi.json", "This document", 200, auth=False, errors=()),
    Op("get", "/healthz", "Liveness", 200, auth=False, errors=()),
    Op(
        "get",
        "/readyz",
        "Readiness: MongoDB and RabbitMQ reachable (503 otherwise)",
        200,
        auth=False,
        errors=(),
    ),
    Op("get", "/metrics", "Prometheus metrics", 200, auth=False, errors=()),
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _parameters(op: Op) -> list[dict[str, Any]]:
    params = []
    for name, what in (
        ("sid", "service instance id (OTC)"),
        ("tid", "toolchain id"),
        ("token", "the dashboard URL's token"),
    ):
        if "{" + name + "}" in op.path:
            params.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "description": what,
                    "schema": {"type": "string", "pattern": ID_PATTERN, "maxLength": 255},
                }
            )
    return params


def _operation(op: Op, root: str | None, refs: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    params = _parameters(op)
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{(root or 'root').replace('-', '_')}_{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '').replace('}', '').replace('.', '_')}",
        "tags": [root or "service"],
        "parameters": params,
        "security": [{"brokerBasic": []}] if op.auth else [],
    }
    if op.request is not None:
        schema = refs[(op.request, "validation")]
        if root is not None and op.request in PER_BROKER:
            schema = _ref(_per_broker_name(op.request, BROKERS[root]))
        out["requestBody"] = {
            "required": not op.request_optional,
            "content": {"application/json": {"schema": schema}},
        }
    ok: dict[str, Any] = {"description": "success"}
    if op.response is not None:
        ok["content"] = {"application/json": {"schema": refs[(op.response, "serialization")]}}
    if "{token}" in op.path:
        _page_extras(params, ok)
    responses: dict[str, Any] = {str(op.success): ok}
    for code in sorted({*op.errors, *(_AUTH_ERRORS if op.auth else ())}):
        responses[str(code)] = {
            "description": op.notes.get(code, _ERRORS[code]),
            "content": {"application/json": {"schema": _ref("ErrorBody")}},
        }
    out["responses"] = responses
    return out


def _page_extras(params: list[dict[str, Any]], ok: dict[str, Any]) -> None:
    """A service's page: its tools are paged, and it is HTML by default."""
    params.append(PAGE_PARAMETER)
    ok.setdefault("content", {})["text/html"] = {
        "schema": {"type": "string"},
        "description": "the same content as a script-less page (the default)",
    }


def _per_broker_name(model: type[BaseModel], kind: str) -> str:
    return f"{model.__name__}_{kind}"


def _per_broker_schemas(defs: dict[str, Any], kinds: tuple[ServiceKind, ...]) -> None:
    """Add, for each PER_BROKER schema, one per broker narrowing ``service_id`` to that broker's
    id (anything else is a 400), keeping the field's optionality. A broker that refuses some
    parameters (kinds.RULES) gets a whole schema of its own whose ``parameters`` allow only null
    for those (no allOf: a generator need not intersect two parameter schemas)."""
    for model in PER_BROKER:
        prop = defs[model.__name__]["properties"]["service_id"]
        nullable = any(alt.get("type") == "null" for alt in prop.get("anyOf", ()))
        for kind in kinds:
            const = {"type": "string", "const": kind}
            value: dict[str, Any] = {"anyOf": [const, {"type": "null"}]} if nullable else const
            service_id = {**value, "description": f"this broker's id, {kind!r}"}
            name = _per_broker_name(model, kind)
            if RULES[kind].refused:
                defs[name] = _own_parameters(defs, model, kind, service_id)
                continue
            defs[name] = {
                "title": name,
                "allOf": [_ref(model.__name__), {"properties": {"service_id": service_id}}],
            }


def _own_parameters(
    defs: dict[str, Any], model: type[BaseModel], kind: ServiceKind, service_id: dict[str, Any]
) -> dict[str, Any]:
    """``model``'s schema with ``service_id`` narrowed and ``parameters`` the kind's own."""
    params = f"ParametersIn_{kind}"
    if params not in defs:
        own = copy.deepcopy(defs["ParametersIn"])
        own["title"] = params
        own["description"] = f"The parameters of a {kind} service; the keys other brokers take are refused"
        for key, why in RULES[kind].refused:
            own["properties"][key] = {"type": "null", "default": None, "description": f"refused (400): {why}"}
        defs[params] = own
    schema: dict[str, Any] = copy.deepcopy(defs[model.__name__])
    schema["title"] = _per_broker_name(model, kind)
    prop = schema["properties"]["parameters"]
    nullable = any(alt.get("type") == "null" for alt in prop.get("anyOf", ()))
    ref = _ref(params)
    schema["properties"]["parameters"] = (
        {"anyOf": [ref, {"type": "null"}], "default": None} if nullable else ref
    )
    schema["properties"]["service_id"] = service_id
    return schema


def _allowed_clusters(defs: dict[str, Any], clusters: tuple[str, ...]) -> None:
    """``parameters.cluster`` accepts only the configured clusters (ALLOWED_CLUSTERS) or null."""
    if not clusters:
        return
    prop = defs["ParametersIn"]["properties"]["cluster"]
    keep = {k: v for k, v in prop.items() if k in ("title", "default")}
    defs["ParametersIn"]["properties"]["cluster"] = {
        "anyOf": [{"type": "string", "enum": list(clusters)}, {"type": "null"}],
        **keep,
        "description": "a configured cluster; null or absent means the first configured one",
    }


@cache
def _spec(version: str, clusters: tuple[str, ...], brokers: tuple[str, ...]) -> dict[str, Any]:
    requests = [(m, "validation") for m in (ProvisionRequest, UpdateRequest, BindRequest, MessageRequest)]
    pages = [PAGE_OPS[b] for b in brokers if b in PAGE_OPS]
    shown = [op.response for op in pages if op.response is not None]
    responses = [
        (m, "serialization") for m in (InstanceResponse, ErrorBody, StatusResponse, VersionResponse, *shown)
    ]
    refs, defs = models_json_schema(
        [*requests, *responses],  # type: ignore[list-item]
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    _allowed_clusters(schemas, clusters)
    _per_broker_schemas(schemas, tuple(BROKERS[b] for b in brokers))
    paths: dict[str, dict[str, Any]] = {}
    for root in brokers:
        for op in BROKER_OPS:
            paths.setdefault(f"/{root}/api/v1{op.path}", {})[op.method] = _operation(op, root, refs)
    for op in (*ROOT_OPS, *pages):
        paths.setdefault(op.path, {})[op.method] = _operation(op, None, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kabanero-otc broker-api",
            "version": version,
            "description": "OTC brokers for Kabanero (kabanero-broker), Kabanero Events "
            "(kabanero-events-broker) and Tekton (tekton-broker); this deployment serves "
            + ", ".join(brokers)
            + '. Every error is JSON {"description"}. Success means the change '
            "is committed; its service.* event is published right away or, if RabbitMQ is unavailable, "
            "later by the outbox drainer.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "brokerBasic": {"type": "http", "scheme": "basic", "description": "BROKER_ID:BROKER_SECRET"}
            },
        },
        "paths": paths,
    }


def openapi_spec(
    version: str, clusters: tuple[str, ...] = (), brokers: tuple[str, ...] = BROKER_ROOTS
) -> dict[str, Any]:
    """The document for this deployment: ``clusters`` (settings) narrows ``parameters.cluster``,
    ``brokers`` (settings) are the brokers it serves (the others' routes are not in it)."""
    return _spec(version, tuple(clusters), tuple(brokers))
