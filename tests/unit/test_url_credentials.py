"""Nothing of a URL's userinfo, query or fragment leaves the cluster: not in a message, not in OTC,
not in a log (docs/design.md, "What never leaves the cluster")."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest

from services.github_linker import naming
from services.kabanero_watcher.derive import (
    Malformed,
    derive_instance,
    derive_legacy_trigger,
    derive_mediation_triggers,
)
from services.otc_writer.desired import TriggerToolStyle, desired_trigger_tool
from shared.events import (
    InstanceRef,
    Repository,
    TriggerData,
    TriggerKey,
    content_hash,
    normalize_repository_url,
)
from shared.logs import JsonFormatter, TextFormatter
from shared.urls import scrub_urls, scrub_values, without_credentials

SECRETS = ("ghp_TOKEN", "s3cr3t", "hunter2", "user:")


def _assert_clean(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    for secret in SECRETS:
        assert secret not in text, text
    assert "?" not in text and "#" not in text, text


@pytest.mark.parametrize(
    ("url", "clean"),
    [
        ("https://user:ghp_TOKEN@github.com/org/repo", "https://github.com/org/repo"),
        ("https://ghp_TOKEN@github.com/org/repo", "https://github.com/org/repo"),
        ("https://listener/hook?access_token=s3cr3t", "https://listener/hook"),
        ("https://listener/hook#access_token=s3cr3t", "https://listener/hook"),
        ("https://u:pa?ss#x@host:8443/p", "https://host:8443/p"),  # unencoded ? and # in a password
        ("git@github.com:org/repo.git", "github.com:org/repo.git"),
        ("https://github.com/org/repo@v1", "https://github.com/org/repo@v1"),  # @ in the path stays
        ("https://listener/it's?access_token=s3cr3t", "https://listener/it's"),  # one URL: taken whole
    ],
)
def test_without_credentials(url: str, clean: str) -> None:
    assert without_credentials(url) == clean


@pytest.mark.parametrize(
    "text",
    ["https://github.com/Org/Repo.git/", "body.x", "http://h", "HTTPS://H/p@v", "no url", "s3://b/k"],
)
def test_clean_text_is_returned_unchanged(text: str) -> None:
    assert scrub_urls(text) is text
    value = {"a": [text, {"b": text}], "n": 1}
    assert scrub_values(value) is value


def test_urls_inside_text_are_scrubbed_and_quotes_kept() -> None:
    assert scrub_urls('send("https://u:hunter2@h/p?t=s3cr3t", body)') == 'send("https://h/p", body)'
    assert scrub_urls("amqp://guest:guest@rabbit:5672/vh") == "amqp://rabbit:5672/vh"


def test_repository_url_has_no_userinfo() -> None:
    assert normalize_repository_url("https://user:ghp_TOKEN@GitHub.com/org/repo.git") == (
        "https://github.com/org/repo"
    )
    assert normalize_repository_url("https://github.com/org/repo") == "https://github.com/org/repo"


def _cr(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "kabanero", "namespace": "ns"}, "spec": spec}


TOKENED_HUB = "https://user:ghp_TOKEN@github.com/org/hub/releases/download/1.0/index.yaml?token=s3cr3t"
TOKENED_PIPELINES = "https://user:ghp_TOKEN@github.com/org/pipes/releases/download/1.0/p.tar.gz"


def test_instance_repositories_carry_no_credentials() -> None:
    release = {"hostname": "user:ghp_TOKEN@ghe.acme.com", "organization": "o", "project": "p"}
    spec = {
        "stacks": {
            "repositories": [{"name": "hub", "https": {"url": TOKENED_HUB}}],
            "pipelines": [
                {"id": "a", "https": {"url": TOKENED_PIPELINES}},
                {"id": "b", "gitRelease": release | {"release": "v1", "assetName": "x.tgz"}},
            ],
        }
    }
    instance = derive_instance("c", _cr(spec))
    assert [r.url for r in instance.repositories] == [
        "https://github.com/org/hub",
        "https://github.com/org/pipes",
        "https://ghe.acme.com/o/p",
    ]
    _assert_clean(instance.model_dump(mode="json"))
    # The github-linker's tool for the stack repository: its repo_url is the clean URL.
    _assert_clean(naming.link_parameters(instance.repositories[0].url, "github"))


def test_legacy_trigger_carries_no_credentials_and_clean_ones_keep_their_hash() -> None:
    entry = {
        "id": "t",
        "sha256": "s1",
        "url": "https://user:ghp_TOKEN@h.io/o/r/releases/download/1/t.tgz?x=s3cr3t",
    }
    trigger = derive_legacy_trigger("c", [_cr({"events": {"enable": True}, "triggers": [entry]})])
    assert trigger is not None
    assert trigger.url == "https://h.io/o/r/releases/download/1/t.tgz"
    assert [r.url for r in trigger.repositories] == ["https://h.io/o/r"]
    _assert_clean(trigger.model_dump(mode="json"))
    clean = {"id": "t", "sha256": "s1", "url": "https://h.io/o/r/releases/download/1/t.tgz"}
    same = derive_legacy_trigger("c", [_cr({"events": {"enable": True}, "triggers": [clean]})])
    assert same is not None and same.content_hash == content_hash(clean)  # as before this rule
    assert trigger.content_hash == same.content_hash  # the token was all that differed


def _mediator() -> dict[str, Any]:
    mediation = {"name": "m1", "sendTo": ["dest"], "body": [{"=": "sendEvent(dest, body, header)"}]}
    return {"metadata": {"name": "webhook", "namespace": "ns"}, "spec": {"mediations": [mediation]}}


def _connection(*targets: dict[str, str]) -> tuple[str, dict[str, Any]]:
    frm = {"mediator": {"name": "webhook", "mediation": "m1", "destination": "dest"}}
    return ("conns", {"from": frm, "to": [{"https": list(targets)}]})


def test_destinations_are_their_url_without_userinfo_or_query() -> None:
    conns = [
        _connection(
            {"url": "https://user:hunter2@listener.ns.svc:9443/hook?access_token=s3cr3t"},
            {"url": "https://listener.ns.svc:9443/hook?access_token=other"},  # the same destination
            # An expression is kept as written, but for the URLs in it.
            {"urlExpression": '"https://u:hunter2@relay/p?token=s3cr3t" + body.x'},
        )
    ]
    (trigger,) = derive_mediation_triggers("c", _mediator(), conns)
    assert trigger.destinations == ["https://listener.ns.svc:9443/hook", '"https://relay/p" + body.x']
    _assert_clean(trigger.model_dump(mode="json")["content"])
    _assert_clean(trigger.destinations)
    tool = desired_trigger_tool(trigger.model_copy(update={"revision": 1}), "tc", TriggerToolStyle())
    _assert_clean(tool.parameters)
    # Derived again with the last pass's triggers (the memo): the same clean trigger, reused.
    (again,) = derive_mediation_triggers("c", _mediator(), conns, {"m1": trigger})
    assert again is trigger


def test_clean_mediations_keep_their_content_hash() -> None:
    conns = [_connection({"url": "https://listener.ns.svc:9443/hook"})]
    mediator = _mediator()
    (trigger,) = derive_mediation_triggers("c", mediator, conns)
    raw = {"mediation": mediator["spec"]["mediations"][0], "mediator": {}, "connections": [conns[0][1]]}
    assert trigger.content == raw and trigger.content_hash == content_hash(raw)


def test_malformed_values_are_quoted_without_credentials() -> None:
    spec: dict[str, Any] = {"version": ["https://user:ghp_TOKEN@github.com/org/repo"]}
    with pytest.raises(Malformed) as raised:
        derive_instance("c", _cr(spec))
    assert "ghp_TOKEN" not in str(raised.value) and "github.com" in str(raised.value)
    bad = copy.deepcopy(spec)
    bad["version"] = "https://" + "x" * 30 + ":ghp_TOKEN@github.com"
    derive_instance("c", _cr(bad))  # a string is no error: nothing quoted


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter("%(message)s")])
def test_logs_never_carry_url_credentials(formatter: logging.Formatter) -> None:
    record = logging.LogRecord(
        "svc", logging.WARNING, __file__, 1, "fetching %s", ("https://user:ghp_TOKEN@github.com/o/r",), None
    )
    record.url = "https://listener/hook?access_token=s3cr3t"
    record.amqp = "amqp://guest:hunter2@rabbit/vh"
    record.nested = {"to": ["https://user:hunter2@listener/b?t=s3cr3t"], "n": 3}
    record.quoted = 'send("https://user:hunter2@relay/p?t=s3cr3t")'
    line = formatter.format(record)
    for secret in ("ghp_TOKEN", "s3cr3t", "hunter2"):
        assert secret not in line
    assert "https://github.com/o/r" in line and "https://listener/hook" in line
    if isinstance(formatter, JsonFormatter):  # still one valid JSON object, values cleaned
        out = json.loads(line)
        assert out["quoted"] == 'send("https://relay/p")'
        assert out["nested"] == {"to": ["https://listener/b"], "n": 3}


def test_otc_writer_cleans_what_an_older_watcher_published() -> None:
    """A trigger stored or in flight from before the watcher stripped URLs reaches OTC clean."""
    old = TriggerData(
        key=TriggerKey(cluster="c", namespace="ns", generation="legacy", owner="kabanero", name="t"),
        instance=InstanceRef(cluster="c", namespace="ns"),
        content_hash="h",
        url="https://user:ghp_TOKEN@h.io/o/r/releases/download/1/t.tgz?x=s3cr3t",
        destinations=["https://user:hunter2@listener/a?access_token=s3cr3t", "https://listener/a"],
        repositories=[Repository.of("https://user:ghp_TOKEN@h.io/o/r", "trigger")],
        revision=1,
    )
    props = json.loads(
        desired_trigger_tool(old, "tc", TriggerToolStyle()).parameters["additional-properties"]
    )
    _assert_clean(props)
    assert props["url"] == "https://h.io/o/r/releases/download/1/t.tgz"
    assert props["destinations"] == ["https://listener/a"] and props["repositories"] == ["https://h.io/o/r"]
