"""The families a watcher runs, as its settings name them (``WATCH_FAMILIES``)."""

from __future__ import annotations

from services.kabanero_watcher.cache import ClusterCache
from services.kabanero_watcher.emitting import Emitter
from services.kabanero_watcher.family import Family
from services.kabanero_watcher.kabanero_family import KabaneroFamily
from services.kabanero_watcher.settings import Settings
from services.kabanero_watcher.tekton_family import TektonCache, TektonFamily


def make_families(settings: Settings, emitter: Emitter) -> list[Family]:
    families: list[Family] = []
    for name in settings.watch_families:
        if name == "kabanero":
            cache = ClusterCache(
                settings.cluster_name,
                legacy_triggers=settings.legacy_triggers,
                legacy_trigger_fields=settings.legacy_trigger_fields,
            )
            families.append(KabaneroFamily(cache, emitter))
        elif name == "tekton":
            families.append(TektonFamily(TektonCache(settings.cluster_name, settings), emitter))
    return families
