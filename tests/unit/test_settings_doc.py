"""docs/deployment.md §2's tables are generated from the settings classes; they must be current."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from scripts import settings_doc
from scripts.settings_doc import DOC, SERVICES, SettingsDocError, env_name, render, table
from shared.settings import CommonSettings


def test_settings_tables_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.settings_doc", "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert render(DOC.read_text()) == DOC.read_text()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_setting_of_a_service_has_its_row(service: str) -> None:
    """Each environment name a service reads is a row of its table or of the common one, with a meaning."""
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[3].strip()
        for line in (table("common") + "\n" + table(service)).splitlines()[2:]
        if not line.startswith("|---")
    }
    names = {env_name(n, f) for n, f in SERVICES[service].model_fields.items()}
    assert names <= rows.keys()
    assert all(rows[name] for name in names)
    assert {env_name(n, f) for n, f in CommonSettings.model_fields.items()} <= rows.keys()


def test_a_setting_without_a_description_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    class Undocumented(BaseSettings):
        documented: int = Field(default=1, description="has one")
        silent: int = 2

    monkeypatch.setitem(settings_doc.TABLES, "github-linker", Undocumented)
    with pytest.raises(SettingsDocError, match="silent"):
        table("github-linker")


def test_defaults_are_written_as_the_environment_takes_them() -> None:
    watcher = table("kabanero-watcher")
    assert "| `WATCH_FAMILIES` | `kabanero,tekton` |" in watcher  # comma-separated, as it is read
    assert "| `HOLDER_IDENTITY` | hostname-pid |" in watcher  # computed: said in words
    linker = table("github-linker")
    assert '| `GITHUB_HOSTS` | `["github.com", "www.github.com"]` |' in linker  # JSON, as it is read
    assert "| `OTC_API_KEY` | **required** |" in table("otc-writer")
    assert (
        "| `HTTP_PORT` | broker-api 8080, kabanero-watcher 8081, otc-writer 8082, github-linker 8083 |"
        in (table("common"))
    )
