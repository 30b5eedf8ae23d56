"""kabanero-watcher: turns Kabanero instances on Kubernetes into ``kabanero.*`` events.

List-then-watch of Kabanero CRs, EventMediators and EventConnections; derives each instance's
repositories and triggers; publishes only real (spec) changes, persisting what it published so a
restart or a 410 re-list emits exactly what was missed. One active replica via a Lease.
"""

from services.kabanero_watcher import kube_lazy

# Before any module of the watcher imports kubernetes_asyncio: its generated indexes load lazily.
kube_lazy.install()
