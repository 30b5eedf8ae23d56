"""The "OTC platform" driver: calls a broker's API the way OTC does (docs/architecture.md §3, otc-api.md §2).

:class:`OtcPlatform` is usable on its own (``async with OtcPlatform(url, id, secret) as otc: ...``);
``platform_routes`` exposes it as ``POST /_emulator/platform/<action>`` so non-Python drivers (the
demo, curl) can use it too. Every call answers the broker's status and body, never raises on a 4xx/5xx.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

BrokerName = Literal["kabanero-broker", "kabanero-events-broker", "tekton-broker"]
SERVICE_IDS: dict[str, str] = {
    "kabanero-broker": "kabanero",
    "kabanero-events-broker": "kabanero-events",
    "tekton-broker": "tekton",
}


@dataclass(frozen=True)
class BrokerReply:
    status: int
    body: Any
    """Parsed JSON, else the text, else None (empty body)."""


class OtcPlatform:
    """OTC's side of the broker contract, with HTTP Basic ``broker_id:broker_secret``.

    Like OTC, it sends ``service_credentials`` on provision and ``toolchain_credentials`` on bind; when
    the caller gives none it makes up opaque ones and keeps them per instance (and toolchain).
    """

    def __init__(
        self,
        broker_url: str,
        broker_id: str,
        broker_secret: str,
        *,
        organization_guid: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.broker_url = broker_url.rstrip("/")
        self.organization_guid = organization_guid or str(uuid.uuid4())
        self._authorization = aiohttp.encode_basic_auth(broker_id, broker_secret)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._service_credentials: dict[tuple[str, str], str] = {}
        self._toolchain_credentials: dict[tuple[str, str, str], str] = {}

    async def __aenter__(self) -> OtcPlatform:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, broker: str, path: str) -> str:
        if broker not in SERVICE_IDS:
            raise ValueError(f"unknown broker {broker!r}; expected one of {sorted(SERVICE_IDS)}")
        return f"{self.broker_url}/{broker}/api/v1{path}"

    async def _call(
        self, method: str, broker: str, path: str, body: dict[str, Any] | None = None
    ) -> BrokerReply:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": self._authorization, "Accept": "application/json"}
        async with self._session.request(method, self._url(broker, path), json=body, headers=headers) as resp:
            raw = await resp.read()
            parsed: Any = None
            if raw:
                try:
                    parsed = await resp.json(content_type=None)
                except ValueError:
                    parsed = raw.decode("utf-8", errors="replace")
            return BrokerReply(status=resp.status, body=parsed)

    async def provision(
        self,
        broker: BrokerName,
        instance_id: str,
        *,
        parameters: dict[str, Any],
        organization_guid: str | None = None,
        service_credentials: str | None = None,
        dashboard_url: str | None = None,
    ) -> BrokerReply:
        """PUT ``/service_instances/{sid}`` (create or update)."""
        creds = service_credentials or self._service_credentials.setdefault(
            (broker, instance_id), f"otc-svc-{secrets.token_urlsafe(24)}"
        )
        body: dict[str, Any] = {
            "service_id": SERVICE_IDS[broker],
            "organization_guid": organization_guid or self.organization_guid,
            "parameters": parameters,
            "service_credentials": creds,
        }
        if dashboard_url is not None:
            body["dashboard_url"] = dashboard_url
        return await self._call("PUT", broker, f"/service_instances/{instance_id}", body)

    async def update(
        self, broker: BrokerName, instance_id: str, *, parameters: dict[str, Any] | None = None
    ) -> BrokerReply:
        """PATCH ``/service_instances/{sid}``."""
        body: dict[str, Any] = {"service_id": SERVICE_IDS[broker]}
        if parameters is not None:
            body["parameters"] = parameters
        return await self._call("PATCH", broker, f"/service_instances/{instance_id}", body)

    async def bind(
        self,
        broker: BrokerName,
        instance_id: str,
        toolchain_id: str,
        *,
        toolchain_credentials: str | None = None,
    ) -> BrokerReply:
        """PUT ``/service_instances/{sid}/toolchains/{tid}``."""
        creds = toolchain_credentials or self._toolchain_credentials.setdefault(
            (broker, instance_id, toolchain_id), f"otc-tc-{secrets.token_urlsafe(24)}"
        )
        return await self._call(
            "PUT",
            broker,
            f"/service_instances/{instance_id}/toolchains/{toolchain_id}",
            {"toolchain_credentials": creds},
        )

    async def unbind(self, broker: BrokerName, instance_id: str, toolchain_id: str) -> BrokerReply:
        """DELETE ``/service_instances/{sid}/toolchains/{tid}``."""
        return await self._call(
            "DELETE", broker, f"/service_instances/{instance_id}/toolchains/{toolchain_id}"
        )

    async def unbind_all(self, broker: BrokerName, instance_id: str) -> BrokerReply:
        """DELETE ``/service_instances/{sid}/toolchains``."""
        return await self._call("DELETE", broker, f"/service_instances/{instance_id}/toolchains")

    async def deprovision(self, broker: BrokerName, instance_id: str) -> BrokerReply:
        """DELETE ``/service_instances/{sid}``."""
        return await self._call("DELETE", broker, f"/service_instances/{instance_id}")

    async def send_message(
        self,
        broker: BrokerName,
        *,
        instance_id: str,
        toolchain_id: str,
        payload: dict[str, Any],
        service_id: str = "toolchain",
    ) -> BrokerReply:
        """POST ``/messaging/accept`` (a lifecycle message from LMS; ``service_id`` is the source)."""
        body = {
            "service_id": service_id,
            "instance_id": instance_id,
            "toolchain_id": toolchain_id,
            "payload": payload,
        }
        return await self._call("POST", broker, "/messaging/accept", body)


# --- HTTP form: /_emulator/platform/... -----------------------------------------------------------


class PlatformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broker_url: str
    broker_id: str
    broker_secret: str


class PlatformRequest(BaseModel):
    """Body of ``POST /_emulator/platform/<action>``; which fields are needed depends on the action."""

    model_config = ConfigDict(extra="forbid")
    broker: BrokerName
    instance_id: str
    toolchain_id: str | None = None
    parameters: dict[str, Any] | None = None
    organization_guid: str | None = None
    service_credentials: str | None = None
    toolchain_credentials: str | None = None
    dashboard_url: str | None = None
    payload: dict[str, Any] | None = None
    service_id: str = "toolchain"


class PlatformHolder:
    """The platform driver currently configured (CLI options, or ``PUT /_emulator/platform/config``)."""

    def __init__(self, platform: OtcPlatform | None = None) -> None:
        self.platform = platform

    async def replace(self, platform: OtcPlatform | None) -> None:
        if self.platform is not None:
            await self.platform.close()
        self.platform = platform


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _dispatch(platform: OtcPlatform, action: str, req: PlatformRequest) -> BrokerReply | None:
    b, sid = req.broker, req.instance_id
    if action == "provision":
        return await platform.provision(
            b,
            sid,
            parameters=req.parameters or {},
            organization_guid=req.organization_guid,
            service_credentials=req.service_credentials,
            dashboard_url=req.dashboard_url,
        )
    if action == "update":
        return await platform.update(b, sid, parameters=req.parameters)
    if action == "deprovision":
        return await platform.deprovision(b, sid)
    if action == "unbind-all":
        return await platform.unbind_all(b, sid)
    if req.toolchain_id is None:
        raise ValueError(f"'{action}' needs toolchain_id")
    if action == "bind":
        return await platform.bind(b, sid, req.toolchain_id, toolchain_credentials=req.toolchain_credentials)
    if action == "unbind":
        return await platform.unbind(b, sid, req.toolchain_id)
    if action == "message":
        return await platform.send_message(
            b,
            instance_id=sid,
            toolchain_id=req.toolchain_id,
            payload=req.payload or {},
            service_id=req.service_id,
        )
    return None


def platform_routes(holder: PlatformHolder) -> list[web.RouteDef]:
    async def configure(request: web.Request) -> web.Response:
        try:
            cfg = PlatformConfig.model_validate(await request.json())
        except (ValueError, ValidationError) as exc:
            return _bad(str(exc))
        await holder.replace(OtcPlatform(cfg.broker_url, cfg.broker_id, cfg.broker_secret))
        return web.json_response({"broker_url": cfg.broker_url, "broker_id": cfg.broker_id})

    async def act(request: web.Request) -> web.Response:
        if holder.platform is None:
            return _bad("no broker configured: start with --broker-url/--broker-id/--broker-secret", 409)
        try:
            req = PlatformRequest.model_validate(await request.json())
            reply = await _dispatch(holder.platform, request.match_info["action"], req)
        except (ValueError, ValidationError) as exc:
            return _bad(str(exc))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _bad(f"broker call failed: {exc!r}", 502)
        if reply is None:
            return _bad(f"unknown action {request.match_info['action']!r}", 404)
        return web.json_response({"status": reply.status, "body": reply.body})

    return [
        web.put("/_emulator/platform/config", configure),
        web.post("/_emulator/platform/{action}", act),
    ]
