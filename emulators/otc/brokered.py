"""Broker-backed tool types: a tool whose ``tool_type_id`` is a registered broker's service id.

In OTC, adding such a tool to a toolchain makes the platform provision a service instance at the
tool's broker and bind it to the toolchain; removing the tool unbinds and deprovisions it (see the
README's "Broker-backed tool types" for what IBM documents and what is inferred). This module does
that through the platform driver (:mod:`emulators.otc.platform`), so the same bodies go out as when
a test drives the broker directly: provision carries ``service_id``, ``organization_guid``,
``parameters`` and ``service_credentials``; bind carries ``toolchain_credentials``.

The tool id is the service instance id. A broker answer other than 2xx fails the tool operation with
the Toolchain API's error shape; a failed bind deprovisions the half-made instance first (orphan
mitigation, as the OSB spec asks of platforms), so a refused create leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from emulators.otc.errors import ApiError
from emulators.otc.platform import BrokerName, BrokerReply, OtcPlatform, PlatformHolder

log = logging.getLogger(__name__)

# tool_type_id (the broker's OTC service id) -> the broker's context root
BROKER_TYPES: dict[str, BrokerName] = {
    "kabanero": "kabanero-broker",
    "kabanero-events": "kabanero-events-broker",
}


@dataclass(frozen=True)
class Provisioned:
    """What the broker answered on provision: the tool card's dashboard URL and label."""

    dashboard_url: str | None
    label: str | None


def _description(reply: BrokerReply) -> str:
    body = reply.body
    if isinstance(body, dict) and isinstance(body.get("description"), str):
        return str(body["description"])[:500]
    return f"HTTP {reply.status}"


def _fail(broker: str, action: str, reply: BrokerReply) -> ApiError:
    """A broker refusal (4xx) is the caller's fault: 400; anything else (5xx) is OTC's: 502."""
    status = 400 if 400 <= reply.status < 500 else 502
    return ApiError(
        status,
        f"Service broker '{broker}' failed to {action} the service instance: {_description(reply)}",
        code="broker_error",
    )


class BrokeredTools:
    """Calls the broker of a broker-backed tool type, through the configured platform driver."""

    def __init__(self, holder: PlatformHolder) -> None:
        self._holder = holder

    def broker_of(self, tool_type_id: str) -> BrokerName | None:
        """The broker behind ``tool_type_id``: registered only while a platform driver is configured."""
        if self._holder.platform is None:
            return None
        return BROKER_TYPES.get(tool_type_id)

    def _platform(self) -> OtcPlatform:
        if self._holder.platform is None:
            raise ApiError(502, "No service broker is configured", code="broker_error")
        return self._holder.platform

    async def _call(self, broker: str, action: str, call: Any) -> BrokerReply:
        try:
            reply: BrokerReply = await call
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(
                502,
                f"Service broker '{broker}' is unreachable ({action}): {exc!r}"[:500],
                code="broker_error",
            ) from None
        log.info("broker call", extra={"broker": broker, "action": action, "status": reply.status})
        return reply

    async def create(
        self, broker: BrokerName, sid: str, toolchain_id: str, parameters: dict[str, Any]
    ) -> Provisioned:
        """Provision ``sid`` with ``parameters`` and bind it to ``toolchain_id`` (both or neither)."""
        platform = self._platform()
        reply = await self._call(broker, "provision", platform.provision(broker, sid, parameters=parameters))
        if reply.status >= 300:
            raise _fail(broker, "provision", reply)
        body = reply.body if isinstance(reply.body, dict) else {}
        bound = await self._call(broker, "bind", platform.bind(broker, sid, toolchain_id))
        if bound.status >= 300:
            await self._call(broker, "deprovision", platform.deprovision(broker, sid))
            raise _fail(broker, "bind", bound)
        params = body.get("parameters")
        label = params.get("label") if isinstance(params, dict) else None
        dashboard = body.get("dashboard_url")
        return Provisioned(
            dashboard_url=dashboard if isinstance(dashboard, str) else None,
            label=label if isinstance(label, str) else None,
        )

    async def update(self, broker: BrokerName, sid: str, parameters: dict[str, Any]) -> None:
        """PATCH the instance with the tool's new parameters."""
        reply = await self._call(
            broker, "update", self._platform().update(broker, sid, parameters=parameters)
        )
        if reply.status >= 300:
            raise _fail(broker, "update", reply)

    async def delete(self, broker: BrokerName, sid: str, toolchain_id: str) -> None:
        """Unbind from ``toolchain_id``, then deprovision (a 404 from a broker counts as done)."""
        platform = self._platform()
        reply = await self._call(broker, "unbind", platform.unbind(broker, sid, toolchain_id))
        if reply.status >= 300 and reply.status != 404:
            raise _fail(broker, "unbind", reply)
        reply = await self._call(broker, "deprovision", platform.deprovision(broker, sid))
        if reply.status >= 300 and reply.status != 404:
            raise _fail(broker, "deprovision", reply)
