"""What differs between the brokers, as data: one :class:`KindRules` per service kind.

Every broker runs the same code (the routes of ``routes.MUTATIONS``, the pure functions of
``instances``, the store and its outbox); a kind's rules only say which parameters apply to its
services, which are refused, how their label reads and where their ``dashboard_url`` points
(docs/architecture.md §3, docs/design.md "The Tekton broker").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.broker_api.errors import BadRequest
from services.broker_api.models import Parameters, ParametersIn
from shared.events import ServiceKind

PageWhen = Literal["never", "create", "always"]
LABEL_NAMESPACES = 3
"""A Tekton label names at most this many namespaces, then says how many more."""


def tekton_label(p: Parameters) -> str:
    """``Tekton on <cluster>``, or with its namespaces ``Tekton on <cluster> (a, b, c +2 more)``."""
    if not p.namespaces:
        return f"Tekton on {p.cluster}"
    shown = ", ".join(p.namespaces[:LABEL_NAMESPACES])
    more = len(p.namespaces) - LABEL_NAMESPACES
    return f"Tekton on {p.cluster} ({shown}{f' +{more} more' if more > 0 else ''})"


@dataclass(frozen=True)
class KindRules:
    kind: ServiceKind
    one_instance: bool
    """True: ``namespace`` (+ ``name``) name one Kabanero instance. False: the service stands for
    the Tekton installation of ``cluster``, filtered by ``namespaces``."""
    events: bool = False
    """``parameters.events`` applies (the Kabanero broker)."""
    creates: bool = False
    """``parameters.create`` / ``instance`` apply (the Kabanero broker)."""
    refused: tuple[tuple[str, str], ...] = ()
    """(key, why) of parameters other brokers give a meaning and this one has none: a 400 naming
    the key unless absent or null, rather than silently widening or ignoring what was asked."""
    page: PageWhen = "never"
    """When the service's ``dashboard_url`` is broker-api's own page (with ``BROKER_PUBLIC_URL``)."""
    landing_setting: str = "kabanero_dashboard_url_pattern"
    """The setting whose pattern is the ``dashboard_url`` otherwise."""

    def refuse(self, given: ParametersIn) -> None:
        for key, why in self.refused:
            if getattr(given, key) is not None:
                raise BadRequest(f"invalid request: 'parameters.{key}' does not apply to this broker ({why})")

    def label(self, p: Parameters) -> str:
        return p.label if self.one_instance else tekton_label(p)

    def has_page(self, p: Parameters) -> bool:
        return self.page == "always" or (self.page == "create" and p.create)


_NOT_TEKTON = "a Tekton service stands for a cluster's installation"
RULES: dict[ServiceKind, KindRules] = {
    "kabanero": KindRules("kabanero", one_instance=True, events=True, creates=True, page="always"),
    # The Events broker validates and ignores events/create/instance (as it always has).
    "kabanero-events": KindRules("kabanero-events", one_instance=True, page="always"),
    "tekton": KindRules(
        "tekton",
        one_instance=False,
        refused=(
            ("namespace", f"{_NOT_TEKTON}; use 'parameters.namespaces' to mirror some namespaces only"),
            ("name", _NOT_TEKTON),
            ("events", "the Tekton broker adds no Kabanero Events tool"),
            ("create", "the Tekton broker creates nothing in the cluster"),
            ("instance", "the Tekton broker creates nothing in the cluster"),
        ),
        page="always",
        landing_setting="tekton_dashboard_url_pattern",
    ),
}
