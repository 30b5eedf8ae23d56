"""Schema-driven fuzzing of broker-api against its own ``/openapi.json`` (schemathesis engine).

Runs the stateless phases (examples, coverage, fuzzing) with every stateless check, including
unsupported methods (405 + ``Allow``), ignored auth, and positive/negative data acceptance, against
the in-process service on the test's real RabbitMQ vhost and database. Seeded and deterministic so a
failure reproduces; example counts are bounded to keep the run short.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import schemathesis
from schemathesis.engine import events
from schemathesis.openapi.checks import RejectedPositiveData

from services.broker_api.models import BROKERS
from tests.helpers import wait_until
from tests.integration.test_broker_api import make_settings, raw_docs, running

SEED = 20240601
MAX_EXAMPLES = 20
# OTC's contract (docs/reference/otc-api.md §2): with broker credentials, a message for an unknown instance is
# a 400. Generated instance ids are never provisioned, so this one answer to valid data is expected.
UNKNOWN_INSTANCE = "invalid request: unknown 'instance_id'"
STATELESS_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "missing_required_header",
    "ignored_auth",
    "unsupported_method",
    "allow_header_conformance",
)


def config(base_url: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": base_url,
            "workers": 1,
            "cache": {"enabled": False},
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "auth": {"basic": {"username": "otc-broker", "password": "broker-s3cret"}},
            "checks": {name: {"enabled": True} for name in STATELESS_CHECKS},
            "phases": {"stateful": {"enabled": False}},
        }
    )


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # (method, path, status) of every request sent
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    dropped: int = 0


def fuzz(base_url: str) -> Report:
    """Blocking (schemathesis uses ``requests``): run it in a thread while the loop serves."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config(base_url))
    report = Report()

    @schema.hook
    def filter_failure(
        context: schemathesis.HookContext, failure: Any, case: schemathesis.Case[Any], response: Any
    ) -> bool:
        expected = (
            case.path.endswith("/messaging/accept")
            and response.status_code == 400
            and isinstance(failure, RejectedPositiveData)
            and json.loads(response.content).get("description") == UNKNOWN_INSTANCE
        )
        report.dropped += expected
        return not expected

    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            rec = event.recorder
            for case_id, interaction in rec.interactions.items():
                if interaction.response is not None:
                    path = urlsplit(interaction.request.uri).path
                    report.calls.append((interaction.request.method, path, interaction.response.status_code))
                for check in rec.checks.get(case_id, []):
                    if check.failure_info is not None:
                        info = check.failure_info
                        answer = interaction.response.content[:300] if interaction.response else b""
                        report.failures.append(
                            f"{rec.label}: {check.name}: {info.failure.title}\n{info.failure.message}\n"
                            f"{info.code_sample}\n-> {answer!r}"
                        )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            report.errors.append(repr(event))
    return report


async def outboxes_empty(mongodb_url: str) -> bool:
    return all(not d.get("outbox") for d in await raw_docs(mongodb_url))


def touched(calls: list[tuple[str, str, int]]) -> set[str]:
    """Record keys (``<kind>:<sid>``) that some successful call may have written."""
    keys = set()
    for method, path, status in calls:
        parts = path.strip("/").split("/")
        if (
            status < 300
            and method in {"PUT", "PATCH"}
            and len(parts) >= 4
            and parts[3] == "service_instances"
        ):
            keys.add(f"{BROKERS[parts[0]]}:{parts[4]}")
    return keys


async def test_fuzzing_the_openapi_contract_finds_no_violation(mongodb_url: str, amqp_url: str) -> None:
    async with running(make_settings(mongodb_url, amqp_url)) as rt:
        report = await asyncio.to_thread(fuzz, rt.url)
        # every committed event gets published (e.g. none too big for AMQP), so outboxes empty out
        await wait_until(lambda: outboxes_empty(mongodb_url), timeout=10, what="outboxes published")
        docs = await raw_docs(mongodb_url)
    assert docs, "fuzzing provisioned nothing"
    assert not report.errors, report.errors
    assert not report.failures, "\n".join(report.failures)
    assert report.dropped, "valid messages never reached the unknown-instance answer"
    assert len(report.calls) > 200, len(report.calls)
    statuses = {status for _, _, status in report.calls}
    assert not {s for s in statuses if s >= 500}
    assert {200, 204, 400, 401, 404, 405} <= statuses, statuses
    tekton = {status for _, path, status in report.calls if path.startswith("/tekton-broker/")}
    assert {200, 204, 400} <= tekton, tekton  # the Tekton broker's contract is fuzzed too
    # a 4xx leaves state unchanged: every stored record was written by a successful call
    stored = {str(d["_id"]) for d in docs}
    assert stored <= touched(report.calls), stored - touched(report.calls)
