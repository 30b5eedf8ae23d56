"""Stored records to wire models: CRNs, hrefs and referents computed from the public base URL."""

from __future__ import annotations

import re
from typing import Any

from emulators.otc.models import Referent, Tool, Toolchain, ToolchainRecord, ToolRecord, iso
from emulators.otc.settings import OtcEmulatorSettings

API_PREFIX = "/toolchain/v2"
UI_BASE = "https://cloud.ibm.com/devops"


_GITHUB_REPO = re.compile(r"^https://github\.com/([^/\s]+)/([^/\s]+?)(?:\.git)?/?$")


def _github_api_href(params: dict[str, Any]) -> str | None:
    """GitHub tools point at the repository's API; other tools have no ``api_href`` here."""
    url = params.get("repo_url")
    match = _GITHUB_REPO.match(url) if isinstance(url, str) else None
    return f"https://api.github.com/repos/{match[1]}/{match[2]}" if match else None


class Renderer:
    def __init__(self, settings: OtcEmulatorSettings, base_url: str) -> None:
        self._settings = settings
        self.api = base_url.rstrip("/") + API_PREFIX

    def _crn_prefix(self) -> str:
        return f"crn:v1:bluemix:public:toolchain:{self._settings.region}:a/{self._settings.account_id}"

    def toolchain_crn(self, toolchain_id: str) -> str:
        return f"{self._crn_prefix()}:{toolchain_id}::"

    def toolchain_ui(self, toolchain_id: str) -> str:
        return f"{UI_BASE}/toolchains/{toolchain_id}?env_id=ibm:yp:{self._settings.region}"

    def toolchain(self, rec: ToolchainRecord) -> Toolchain:
        return Toolchain(
            id=rec.id,
            name=rec.name,
            description=rec.description,
            account_id=self._settings.account_id,
            location=self._settings.region,
            resource_group_id=rec.resource_group_id,
            crn=self.toolchain_crn(rec.id),
            href=f"{self.api}/toolchains/{rec.id}",
            ui_href=self.toolchain_ui(rec.id),
            created_at=iso(rec.created_at),
            updated_at=iso(rec.updated_at),
            created_by=rec.created_by,
        )

    def tool(self, rec: ToolRecord, toolchain: ToolchainRecord) -> Tool:
        params = rec.parameters
        ui = params.get("repo_url") or params.get("dashboard_url") or rec.broker_dashboard_url
        ui_href = ui if isinstance(ui, str) else f"{UI_BASE}/toolchains/{rec.toolchain_id}/tools/{rec.id}"
        return Tool(
            id=rec.id,
            resource_group_id=toolchain.resource_group_id,
            crn=f"{self._crn_prefix()}:{rec.toolchain_id}::tool:{rec.id}",
            tool_type_id=rec.tool_type_id,
            toolchain_id=rec.toolchain_id,
            toolchain_crn=self.toolchain_crn(rec.toolchain_id),
            href=f"{self.api}/toolchains/{rec.toolchain_id}/tools/{rec.id}",
            referent=Referent(ui_href=ui_href, api_href=_github_api_href(params)),
            name=rec.name,
            updated_at=iso(rec.updated_at),
            parameters=params,
            state=rec.state,
        )
