"""``kabanero-otc doctor`` without I/O: each judgement from what a dependency answered, the exit code,
and the table. End to end (all green, wrong credentials, the Kubernetes API down):
tests/e2e/test_cli.py."""

from __future__ import annotations

import json

from kotc_cli import doctor
from kotc_cli.errors import OK, PROBLEM, USAGE
from services.kabanero_watcher.settings import Settings as WatcherSettings
from services.otc_writer.otc_client import OtcError, OtcPermanentError


def test_cluster_identity() -> None:
    assert doctor.identity_check("c", None, "u1").outcome == "ok"
    assert doctor.identity_check("c", "u1", "u1").detail == "c = kube-system uid u1, as recorded"
    other = doctor.identity_check("c", "u0", "u1")
    assert other.outcome == "problem" and "recorded for cluster u0" in other.detail and other.fix


def test_broker_auth() -> None:
    assert doctor.broker_auth_check("http://b", 401, 404).outcome == "ok"
    open_door = doctor.broker_auth_check("http://b", 404, 404)
    assert open_door.outcome == "problem" and "HTTP 404, not 401" in open_door.detail
    refused = doctor.broker_auth_check("http://b", 401, 401)
    assert refused.outcome == "problem" and "refused" in refused.detail


def test_the_broker_probed_is_one_the_deployment_serves() -> None:
    assert doctor.served_broker({"brokers": ["tekton-broker", "kabanero-broker"]}) == "tekton-broker"
    unsaid: list[object] = [None, "down", {}, {"brokers": []}, {"brokers": ["../admin"]}, {"brokers": [7]}]
    for status in unsaid:
        assert doctor.served_broker(status) == "kabanero-broker"


def test_iam_refusing_the_key_is_a_problem_anything_else_unreachable() -> None:
    assert doctor.iam_check(OtcPermanentError("bad key", status=400), "http://iam").outcome == "problem"
    assert doctor.iam_check(OtcError("denied", status=403), "http://iam").outcome == "problem"
    down = doctor.iam_check(OtcError("502", status=502), "http://iam")
    assert down.outcome == "unreachable" and down.detail.startswith("http://iam: ")


def test_rbac_denials_and_an_absent_optional_crd() -> None:
    assert doctor.denial("list x", 403) == "list x"
    assert doctor.denial("list x", 401) == "list x"
    assert doctor.denial("list x", 404) is None
    assert doctor.denial("list x", 500) == "list x (HTTP 500)"
    (watcher,) = [c for c in doctor.RBAC_CHECKS if c.name == "watcher rbac"]
    assert doctor.rbac_check(watcher, []).outcome == "ok"
    denied = doctor.rbac_check(watcher, [doctor.Denied("list x", "ClusterRole: rule")])
    assert (denied.outcome, denied.detail) == ("problem", "denied: list x")
    assert denied.fix == f"{watcher.fix}; grant: ClusterRole: rule"


def test_a_watcher_is_checked_for_what_its_families_read_and_its_lease_always() -> None:
    def names(checks: list[doctor.RbacCheck]) -> list[str]:
        return [c.name for c in checks]

    run, skipped = doctor.applicable(("tekton",))
    assert names(run) == ["watcher lease rbac", "watcher tekton rbac"] and names(skipped) == ["watcher rbac"]
    run, skipped = doctor.applicable(("kabanero",))
    assert names(run) == ["watcher lease rbac", "watcher rbac"] and names(skipped) == ["watcher tekton rbac"]
    run, skipped = doctor.applicable(("kabanero", "tekton"))
    assert len(run) == len(doctor.RBAC_CHECKS) and not skipped


def _settings(**fields: object) -> WatcherSettings:
    return WatcherSettings.model_validate({"cluster_name": "c", "lease_namespace": "kotc", **fields})


def test_tekton_rbac_lists_every_kind_the_watcher_reads_where_it_reads_it() -> None:
    (tekton,) = [c for c in doctor.RBAC_CHECKS if c.family == "tekton"]
    wanted = doctor.requests(tekton.access, _settings(tekton_install_namespaces="tekton-pipelines"))
    paths = {r.path for r in wanted}
    assert {
        "/apis/tekton.dev/v1/pipelines",
        "/apis/triggers.tekton.dev/v1beta1/eventlisteners",
        "/apis/tekton.dev/v1alpha1/eventlisteners",  # Triggers of Kabanero 0.6-0.8
        "/apis/operator.tekton.dev/v1alpha1/config",
        "/apis/operator.tekton.dev/v1alpha1/tektonconfigs",
        "/api/v1/namespaces/tekton-pipelines/configmaps",
        "/apis/apps/v1/namespaces/tekton-pipelines/deployments",
        "/apis/route.openshift.io/v1/routes",
    } <= paths
    # Watching some namespaces only: the cards' kinds are listed in each of them.
    narrow = doctor.requests(tekton.access, _settings(watch_namespaces="a,b"))
    assert {r.path for r in narrow if r.access.plural == "pipelines"} == {
        "/apis/tekton.dev/v1/namespaces/a/pipelines",
        "/apis/tekton.dev/v1/namespaces/b/pipelines",
    }


def test_a_403_names_the_exact_rule_to_grant_and_a_404_is_not_installed() -> None:
    (tekton,) = [c for c in doctor.RBAC_CHECKS if c.family == "tekton"]
    pipelines = doctor.Request(doctor.Access("tekton.dev", "v1", "pipelines", "watched"), None)
    config_maps = doctor.Request(doctor.Access("", "v1", "configmaps", "install"), "openshift-pipelines")
    assert (
        pipelines.rule
        == "ClusterRole: apiGroups [tekton.dev], resources [pipelines], verbs [get, list, watch]"
    )
    assert config_maps.rule == (
        'Role in openshift-pipelines: apiGroups [""], resources [configmaps], verbs [get, list, watch]'
    )
    denied = [
        doctor.Denied(why, r.rule)
        for r, status in ((pipelines, 403), (config_maps, 404))
        if (why := doctor.denial(r.what, status)) is not None
    ]
    check = doctor.rbac_check(tekton, denied)
    assert (check.outcome, check.detail) == ("problem", "denied: list pipelines.tekton.dev")
    assert check.fix.endswith("grant: " + pipelines.rule)
    assert "configmaps" not in check.fix


def test_verdict_unreachable_beats_problem_beats_ok() -> None:
    ok = doctor.Check("a", "ok", "")
    problem = doctor.Check("b", "problem", "", "fix b")
    down = doctor.Check("c", "unreachable", "", "fix c")
    skipped = doctor.Check("d", "skipped", "")
    assert doctor.verdict([ok, skipped]) == OK
    assert doctor.verdict([ok, problem]) == PROBLEM
    assert doctor.verdict([problem, down]) == USAGE


def test_render() -> None:
    checks = [
        doctor.Check("a", "ok", "fine"),
        doctor.Check("kubernetes api", "unreachable", "down", "fix it"),
    ]
    report = doctor.render(checks, source="environment")
    assert report.code == USAGE
    data = json.loads(report.render(as_json=True))
    assert data["source"] == "environment"
    assert data["checks"][1] == {
        "name": "kubernetes api",
        "outcome": "unreachable",
        "detail": "down",
        "fix": "fix it",
    }
    text = report.render(as_json=False)
    assert "DOCTOR (settings from environment)" in text
    assert text.endswith("1 check(s) failed; unreachable: kubernetes api")
    assert doctor.render([checks[0]], source="x").render(as_json=False).endswith("all checks passed")
