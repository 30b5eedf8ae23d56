"""Discovery documents (`/api`, `/apis`, APIResourceLists), `/version` and the OpenAPI documents kubectl reads.

kubectl (1.2x-1.3x) needs, besides legacy discovery (it falls back to it when the aggregated-discovery
content type is not returned):

- `/openapi/v3` and `/openapi/v3/apis/<group>/<version>`: it looks for a PATCH operation carrying the
  `x-kubernetes-group-version-kind` of the object and a `fieldValidation` query parameter, and then leaves
  validation to the server (`?fieldValidation=Strict`) instead of validating client-side;
- `/openapi/v2` as protobuf: a minimal valid document (no definitions), so any client-side lookup finds
  no schema and skips validation. No component schemas are published, so `kubectl apply` computes JSON
  merge patches for custom resources and strategic merge patches from its built-in types for ConfigMaps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from .resources import Registry, ResourceType

SERVER_VERSION: dict[str, str] = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kube-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

GroupFilter = Callable[[str], bool]


class Discovery:
    def __init__(self, registry: Registry, group_present: GroupFilter) -> None:
        self.registry = registry
        self.group_present = group_present

    def _served(self, group: str) -> bool:
        return group == "" or self.group_present(group)

    def core_versions(self, server_address: str) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        }

    def api_group(self, group: str) -> dict[str, Any] | None:
        if not group or not self._served(group) or group not in self.registry.groups():
            return None
        versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in self.registry.versions(group)]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": versions,
            "preferredVersion": versions[0],
        }

    def api_groups(self) -> dict[str, Any]:
        groups = [g for g in (self.api_group(name) for name in self.registry.groups()) if g is not None]
        for g in groups:
            del g["kind"], g["apiVersion"]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        if not self._served(group):
            return None
        types = self.registry.in_group_version(group, version)
        if not types:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [entry for rt in types for entry in rt.api_resource()],
        }

    # ------------------------------------------------------------------ OpenAPI

    def _group_versions(self) -> list[tuple[str, str]]:
        return [(g, v) for g, v in self.registry.group_versions() if self._served(g)]

    @staticmethod
    def _gv_path(group: str, version: str) -> str:
        return f"apis/{group}/{version}" if group else f"api/{version}"

    def openapi_v3_root(self) -> dict[str, Any]:
        paths = {}
        for group, version in self._group_versions():
            path = self._gv_path(group, version)
            digest = hashlib.sha256(json.dumps(self.openapi_v3_group(group, version)).encode()).hexdigest()
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest[:32].upper()}"}
        return {"paths": paths}

    @staticmethod
    def _operations(rt: ResourceType, action: str, version: str) -> dict[str, Any]:
        gvk = {"group": rt.group, "version": version, "kind": rt.kind}
        params = [
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
        ]
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}
        op: dict[str, Any] = {
            "operationId": f"{action}{rt.kind}",
            "parameters": params,
            "responses": ok,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        }
        return op

    def openapi_v3_group(self, group: str, version: str) -> dict[str, Any] | None:
        if not self._served(group):
            return None
        types = self.registry.in_group_version(group, version)
        if not types:
            return None
        paths: dict[str, Any] = {}
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        for rt in types:
            base = (
                f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{prefix}/{rt.plural}"
            )
            paths[base] = {
                "get": self._operations(rt, "list", version),
                "post": self._operations(rt, "post", version),
            }
            paths[f"{base}/{{name}}"] = {
                "get": self._operations(rt, "get", version),
                "put": self._operations(rt, "put", version),
                "patch": self._operations(rt, "patch", version),
                "delete": self._operations(rt, "delete", version),
            }
            if rt.status_subresource:
                paths[f"{base}/{{name}}/status"] = {
                    "get": self._operations(rt, "get", version),
                    "put": self._operations(rt, "put", version),
                    "patch": self._operations(rt, "patch", version),
                }
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths,
            "components": {"schemas": {}},
        }

    @staticmethod
    def openapi_v2_json() -> dict[str, Any]:
        return {
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": {},
            "definitions": {},
        }

    @staticmethod
    def openapi_v2_protobuf() -> bytes:
        """gnostic `openapi_v2.Document{swagger: "2.0", info: {title, version}}`, hand-encoded."""

        def field(number: int, payload: bytes) -> bytes:
            return bytes([(number << 3) | 2, len(payload)]) + payload

        info = field(1, b"Kubernetes") + field(2, SERVER_VERSION["gitVersion"].encode())
        return field(1, b"2.0") + field(2, info)
