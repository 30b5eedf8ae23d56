"""The desired OTC state of the seeded Kabanero namespace, computed from the cluster's objects by the
user-visible rules (docs/reference/kabanero.md §6, §7), never by the product's own derivation: what the
e2e fault tests and ``bench/chaos.py`` compare OTC's tools against. Also the mediations those harnesses write
(one EventConnections entry each, whose URL carries the mediation's revision)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

NS = "kabanero"
MEDIATOR = "webhook"
CRS = {  # the seeded objects (deploy/samples/kabanero-sample.yaml) the harnesses change and read
    "mediator": f"/apis/events.kabanero.io/v1alpha1/namespaces/{NS}/eventmediators/{MEDIATOR}",
    "connections": f"/apis/events.kabanero.io/v1alpha1/namespaces/{NS}/eventconnections/connections",
    "kabanero": f"/apis/kabanero.io/v1alpha2/namespaces/{NS}/kabaneros/kabanero",
    "stacks": f"/apis/kabanero.io/v1alpha2/namespaces/{NS}/stacks",
    "gitops-map": f"/api/v1/namespaces/{NS}/configmaps/gitops-map",
}
_RELEASE = re.compile(r"^https://([^/]+)/([^/]+)/([^/]+)/releases/download/[^/]+/[^/]+$")


def mediation(name: str, rev: int) -> dict[str, Any]:
    """Mediation ``name`` at revision ``rev`` (the revision is in its selector)."""
    return {
        "name": name,
        "selector": {"urlPattern": f"{name}-r{rev}"},
        "sendTo": ["dest"],
        "body": [{"=": "sendEvent(dest, body, header)"}],
    }


def connection(name: str, rev: int) -> dict[str, Any]:
    """The EventConnections entry of mediation ``name``; its URL carries the revision."""
    url = f"https://el-{name}.{NS}.svc:8080/r{rev}"
    return {
        "from": {"mediator": {"name": MEDIATOR, "mediation": name, "destination": "dest"}},
        "to": [{"https": [{"url": url, "insecure": True}]}],
    }


def shown(url: str) -> str:
    """A URL as OTC may show it (docs/design.md, "What never leaves the cluster"): without its
    userinfo, query and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def expected_triggers(mediator: dict[str, Any], connections: dict[str, Any]) -> dict[str, list[str]]:
    """Mediation name -> its destination URLs: the EventConnections entries whose ``from.mediator``
    names this mediator, this mediation and one of its ``sendTo`` destinations (eventEndpointMatch)."""
    out: dict[str, list[str]] = {}
    for item in mediator["spec"].get("mediations") or []:
        urls: set[str] = set()
        for conn in connections["spec"].get("connections") or []:
            src = conn["from"]["mediator"]
            if (
                src["name"] == MEDIATOR
                and src.get("mediation") == item["name"]
                and src.get("destination") in (item.get("sendTo") or [])
            ):
                urls |= {shown(h["url"]) for to in conn.get("to") or [] for h in to.get("https") or []}
        out[item["name"]] = sorted(urls)
    return out


def _repository(ref: dict[str, Any]) -> str:
    """The repository of an archive reference: a complete gitRelease, else a release-download URL."""
    g = ref.get("gitRelease") or {}
    if all(g.get(f) for f in ("hostname", "organization", "project", "release", "assetName")):
        return f"https://{g['hostname']}/{g['organization']}/{g['project']}"
    m = _RELEASE.match(shown(ref["https"]["url"]))
    if m is None:
        raise ValueError(f"no repository in {ref}")
    return "https://{}/{}/{}".format(*m.groups())


def expected_repos(
    kabanero: dict[str, Any], stacks: list[dict[str, Any]], gitops_map: dict[str, Any]
) -> set[str]:
    """Stack hubs, the pipelines they use (their own, else the instance's), GitOps pipelines, the
    active Stack versions' pipelines and the gitops-map repository (docs/design.md, Kabanero semantics)."""
    spec = kabanero["spec"]
    if spec.get("triggers"):
        raise ValueError("these harnesses' instance has no legacy triggers")
    repos = set()
    for hub in spec["stacks"].get("repositories") or []:
        repos.add(_repository(hub))
        for p in hub.get("pipelines") or spec["stacks"].get("pipelines") or []:
            repos.add(_repository(p))
    for p in spec.get("gitops", {}).get("pipelines") or []:
        repos.add(_repository(p))
    for stack in stacks:
        for version in stack["spec"].get("versions") or []:
            if str(version.get("desiredState", "")).lower() != "inactive":
                repos |= {_repository(p) for p in version.get("pipelines") or []}
    repos.add(gitops_map["data"]["gitops-repository-url"].removesuffix(".git"))
    return repos


def differences(tools: list[dict[str, Any]], triggers: dict[str, list[str]], repos: set[str]) -> list[str]:
    """Every way OTC's tools differ from the desired state (empty: converged, nothing duplicated)."""
    problems: list[str] = []
    names = [str(t.get("name")) for t in tools]
    if len(set(names)) != len(names):
        problems.append(f"duplicate tool names: {sorted(n for n in set(names) if names.count(n) > 1)}")
    seen: dict[str, list[str]] = {}
    for tool in (t for t in tools if t["tool_type_id"] == "customtool"):
        props = json.loads(tool["parameters"]["additional-properties"])
        name = props["trigger"]
        seen.setdefault(name, []).append(tool["name"])
        if not tool["name"].startswith(f"kabanero-trigger {NS} {MEDIATOR} {name} "):
            problems.append(f"trigger tool name {tool['name']!r} does not name mediation {name!r}")
        if (props["cluster"], props["namespace"], props["owner"]) != ("default", NS, MEDIATOR):
            problems.append(f"trigger tool {tool['name']!r} references {props}")
        if name in triggers and props["destinations"] != triggers[name]:
            problems.append(f"{name}: destinations {props['destinations']} != {triggers[name]}")
    for name, tool_names in seen.items():
        if len(tool_names) > 1:
            problems.append(f"{len(tool_names)} trigger tools for mediation {name!r}: {tool_names}")
    if set(seen) != set(triggers):
        problems.append(f"trigger tools for {sorted(seen)}, mediations {sorted(triggers)}")
    urls = [t["parameters"]["repo_url"] for t in tools if t["tool_type_id"] == "githubconsolidated"]
    if sorted(urls) != sorted(repos):
        problems.append(f"GitHub tools {sorted(urls)} != repositories {sorted(repos)}")
    if len(tools) != len(triggers) + len(repos):
        problems.append(f"{len(tools)} tools, expected {len(triggers)} + {len(repos)}")
    return problems
