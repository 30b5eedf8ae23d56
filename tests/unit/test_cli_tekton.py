"""The Tekton rows of ``kabanero-otc status`` without I/O: a Tekton service, a cluster's installation
as its watcher reported it, the problems and the cells. End to end: tests/e2e/test_cli.py."""

from __future__ import annotations

import pytest

from kotc_cli import plan, settings, status, tekton
from kotc_cli.errors import CliError
from services.broker_api.models import InstanceRecord
from services.otc_writer.family import FAMILIES
from services.otc_writer.ledger import LedgerEntry
from shared.events import TektonInstallationData


def _report(**fields: object) -> TektonInstallationData:
    base: dict[str, object] = {
        "cluster": "prod",
        "found": True,
        "reason": "config.operator.tekton.dev/cluster: installed",
        "pipelines_version": "v0.11.3",
        "triggers_version": "v0.4.0",
        "controller_namespace": "openshift-pipelines",
        "dashboard_url": "https://dash.example",
        "cards": {"kabanero": 3},
        "content_hash": "h",
        "revision": 2,
    }
    return TektonInstallationData.model_validate(base | fields)


def test_a_found_installation_with_a_service_is_no_problem_and_shows_what_was_found() -> None:
    row = tekton.installation_row("prod", _report(), ["t1"], {"applied": 3})
    assert list(tekton.installation_problems(row)) == []
    assert (tekton.found_cell(row), tekton.versions_cell(row)) == (
        "yes",
        "pipelines v0.11.3, triggers v0.4.0",
    )
    assert tekton.counts_cell(row["cards"]) == "kabanero=3"
    assert tekton.counts_cell(row["tools"]) == "applied=3"
    assert tekton.installation_detail(row).startswith("https://dash.example config.operator")


def test_no_installation_is_a_problem_only_for_a_cluster_a_service_stands_for() -> None:
    missing = _report(found=False, reason="no Tekton Pipelines CRD is served", pipelines_version=None)
    row = tekton.installation_row("prod", missing, ["t1", "t2"], {})
    assert list(tekton.installation_problems(row)) == [
        "Tekton service(s) t1, t2 of cluster prod: the watcher finds no Tekton installation: "
        "no Tekton Pipelines CRD is served"
    ]
    assert tekton.found_cell(row) == "NO"
    assert list(tekton.installation_problems(tekton.installation_row("prod", missing, [], {}))) == []


def test_a_service_whose_cluster_never_reported_names_the_watcher_settings() -> None:
    row = tekton.installation_row("edge", None, ["t1"], {})
    assert (row["reported"], row["found"], tekton.found_cell(row)) == (False, None, "-")
    (problem,) = tekton.installation_problems(row)
    assert (
        "no installation report" in problem and "WATCH_FAMILIES" in problem and "CLUSTER_NAME edge" in problem
    )
    assert tekton.installation_detail(row) == "no report from the watcher yet"


def test_a_service_row_shows_its_filter_bindings_and_otc_writers_view() -> None:
    rec = InstanceRecord.model_validate(
        {
            "_id": "tekton:t1",
            "kind": "tekton",
            "instance_id": "t1",
            "service_id": "tekton",
            "parameters": {"cluster": "prod", "namespace": "", "namespaces": ["dev", "kabanero"]},
            "dashboard_url": "https://broker/dashboard/tekton/t1",
            "toolchains": [{"id": "tc1", "credentials": "x", "bound_at": "2026-01-01T00:00:00Z"}],
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }
    )
    row = tekton.service_row(rec, {"toolchains": ["tc1"]}, {"kabanero": 2})
    assert (tekton.namespaces_cell(row), tekton.writer_cell(row)) == ("dev,kabanero", "same")
    assert tekton.writer_cell(row | {"writer_toolchains": None}) == "not yet"
    assert tekton.writer_cell(row | {"writer_toolchains": []}) == "none"
    assert tekton.namespaces_cell(row | {"namespaces": None}) == "all"


def test_card_tools_count_by_cluster_of_their_scope() -> None:
    entry = LedgerEntry.model_validate(
        {"_id": "x", "purpose": "tekton", "key": "k", "toolchain_id": "tc", "scope": "tekton:prod/kabanero"}
    )
    assert tekton.cluster_of_tool(entry) == "prod"
    assert tekton.cluster_of_tool(entry.model_copy(update={"scope": "prod/kabanero"})) is None


def test_status_has_the_tekton_sections() -> None:
    keys = [s.key for s in status.SECTIONS]
    assert keys.index("kabanero_services") < keys.index("tekton_services") < keys.index("tools")
    assert "tekton_installations" in keys


def test_plan_computes_the_tools_of_every_writer_family() -> None:
    """Tekton cards are computed from the projection like triggers, not taken from the ledger."""
    assert set(plan.COMPUTED) == {f.purpose for f in FAMILIES} == {"trigger", "tekton"}


def test_the_watchers_families_are_settings_of_the_cli() -> None:
    assert settings.build({"watch_families": "tekton"}, environment=False).watch_families == ("tekton",)
    assert settings.build({}, environment=False).watch_families == ("kabanero", "tekton")
    with pytest.raises(CliError, match="WATCH_FAMILIES"):
        settings.build({"watch_families": "tekton,jenkins"}, environment=False)
