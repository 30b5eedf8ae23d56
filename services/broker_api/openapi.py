"""OpenAPI 3.1 document generated from the pydantic models (served at ``/openapi.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.broker_api.models import (
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

BROKER_ROOTS = ("kabanero-broker", "kabanero-events-broker")
_ERRORS = {
    400: "bad input: malformed JSON, wrong types, missing or mismatched field, bad id",
    401: "missing or wrong HTTP Basic credentials",
    404: "unknown service instance, or no such route",
    405: "method not allowed on this route",
    413: "body over 64 KiB",
    503: "storage unavailable; retry",
}


@dataclass(frozen=True)
class Op:
    method: Literal["get", "put", "patch", "delete", "post"]
    path: str
    summary: str
    success: int
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    auth: bool = True
    errors: tuple[int, ...] = (400, 401, 405, 413, 503)
    request_optional: bool = False


BROKER_OPS = (
    Op(
        "put",
        "/service_instances/{sid}",
        "Provision or update (upsert) a service instance",
        200,
        ProvisionRequest,
        InstanceResponse,
    ),
    Op(
        "patch",
        "/service_instances/{sid}",
        "Update parameters of a service instance",
        200,
        UpdateRequest,
        InstanceResponse,
        errors=(400, 401, 404, 405, 413, 503),
    ),
    Op("delete", "/service_instances/{sid}", "Delete a service instance (204 also when unknown)", 204),
    Op(
        "put",
        "/service_instances/{sid}/toolchains/{tid}",
        "Bind to a toolchain (repeat: 204)",
        204,
        BindRequest,
        errors=(400, 401, 404, 405, 413, 503),
    ),
    Op(
        "delete",
        "/service_instances/{sid}/toolchains/{tid}",
        "Unbind from a toolchain (204 also when not bound)",
        204,
    ),
    Op("delete", "/service_instances/{sid}/toolchains", "Unbind from every toolchain", 204),
    Op(
        "post",
        "/messaging/accept",
        "Accept an OTC lifecycle message (Basic: broker or toolchain credentials)",
        204,
        MessageRequest,
        auth=True,
    ),
)
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


def _operation(op: Op, root: str | None, refs: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    params = []
    for name, what in (("sid", "service instance id (OTC)"), ("tid", "toolchain id")):
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
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{(root or 'root').replace('-', '_')}_{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '').replace('}', '').replace('.', '_')}",
        "tags": [root or "service"],
        "parameters": params,
        "security": [{"brokerBasic": []}] if op.auth else [],
    }
    if op.request is not None:
        out["requestBody"] = {
            "required": not op.request_optional,
            "content": {"application/json": {"schema": refs[(op.request, "validation")]}},
        }
    ok: dict[str, Any] = {"description": "success"}
    if op.response is not None:
        ok["content"] = {"application/json": {"schema": refs[(op.response, "serialization")]}}
    responses: dict[str, Any] = {str(op.success): ok}
    for code in op.errors:
        responses[str(code)] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": _ref("ErrorBody")}},
        }
    out["responses"] = responses
    return out


@cache
def _spec(version: str) -> dict[str, Any]:
    requests = [(m, "validation") for m in (ProvisionRequest, UpdateRequest, BindRequest, MessageRequest)]
    responses = [(m, "serialization") for m in (InstanceResponse, ErrorBody, StatusResponse, VersionResponse)]
    refs, defs = models_json_schema(
        [*requests, *responses],  # type: ignore[list-item]
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for root in BROKER_ROOTS:
        for op in BROKER_OPS:
            paths.setdefault(f"/{root}/api/v1{op.path}", {})[op.method] = _operation(op, root, refs)
    for op in ROOT_OPS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, None, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kabanero-otc broker-api",
            "version": version,
            "description": "OTC brokers for Kabanero (kabanero-broker) and Kabanero Events "
            '(kabanero-events-broker). Every error is JSON {"description"}. Success means the change '
            "is committed; its service.* event is published right away or, if RabbitMQ is unavailable, "
            "later by the outbox drainer.",
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "brokerBasic": {"type": "http", "scheme": "basic", "description": "BROKER_ID:BROKER_SECRET"}
            },
        },
        "paths": paths,
    }


def openapi_spec(version: str) -> dict[str, Any]:
    return _spec(version)
