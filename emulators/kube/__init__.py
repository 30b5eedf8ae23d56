"""Kubernetes API server emulator for kabanero-otc tests and demos.

Serves, over plain HTTP (aiohttp), `kabaneros`/`stacks` (`kabanero.io/v1alpha2`), `eventmediators`/
`eventconnections` (`events.kabanero.io/v1alpha1`; both groups left out with `kabanero=False` /
`--no-kabanero`), core `v1` `configmaps`, `namespaces` and `services`, `leases`
(`coordination.k8s.io/v1`), `deployments` (`apps/v1`), `ingresses` (`networking.k8s.io/v1`), `routes`
(`route.openshift.io/v1`), `customresourcedefinitions` (`apiextensions.k8s.io/v1`) and the resource of
every CRD written (`crd.py`; Tekton's releases are bundled: `crds=["tekton-v0.11.3", ...]`,
`--crds`/`--tekton`): list (namespaced and across namespaces, label/field selectors,
`limit`/`continue`), get, create, update, patch (merge, strategic-as-merge, JSON patch), delete,
deletecollection, the `/status` subresource of the custom resources, and watch (`?watch=1`) with
ADDED/MODIFIED/DELETED/BOOKMARK/ERROR events. Discovery, `/version` and `/openapi/v2|v3` are enough for
`kubectl --server http://HOST:PORT get|apply|delete`. Write semantics: see `emulators.kube.store`.

Run: `python -m emulators.kube --port 8001 [--host 127.0.0.1] [--history-window 1000]
[--bookmark-interval 60] [--crds BUNDLE ...] [--tekton v0.10.1|v0.11.3|current] [--no-kabanero]
[--seed FILE.yaml ...] [--kubeconfig PATH]`; in tests: `emulators.kube.testing.KubeEmulator.running(...)`.

Control endpoints (JSON in, JSON out; the same operations as `KubeEmulator.inject(name, **params)`):

- `GET  /_emulator/state`: `{"resourceVersion", "counts": {type: n}, "history": {type: n},
  "historyWindow", "watches": {"open", "stalled", "byResource"}, "crds": [names], "faults": {...}}`.
- `POST /_emulator/drop` `{"mode": "abort"|"close" = "abort", "resource"?: "kabaneros"}`: end the open watch
  streams; `abort` cuts the connection mid-stream, `close` ends the response cleanly. → `{"dropped": n}`.
- `POST /_emulator/stall` `{"seconds"?: number|null, "resource"?: str}`: the open watch streams send
  nothing (connection kept open) for `seconds`, or until released; events that happen meanwhile are sent
  afterwards. → `{"stalled": n}`.
- `POST /_emulator/release` `{}`: end all stalls now. → `{"released": n}`.
- `POST /_emulator/expire` `{}`: compact the history; a watch from any older resourceVersion gets the
  410 `ERROR` event. → `{"resourceVersion": "current"}`.
- `POST /_emulator/crds` `{"present": bool, "group"?: "events.kabanero.io"}`: make a whole API group
  absent (404 on all its paths, gone from discovery and OpenAPI; its open watches are closed; objects
  are kept) or present again. → `{"absentGroups": [...]}`.
- `POST /_emulator/install` `{"bundle": "tekton-v0.11.3"}` (a name of `crd.BUNDLES` or a YAML file of
  CRDs): create or replace its CRDs, whose resources are served from now on. → `{"installed": [...],
  "crds": [all installed]}`. `POST /_emulator/uninstall` `{"bundle": ...}`: delete them (their objects
  first, DELETED on open watches, then 404). → `{"deleted": [...], "crds": [...]}`.
- `POST /_emulator/latency` `{"ms": number}`: delay every API request (not `/_emulator/`). → `{"latencyMs"}`.
- `POST /_emulator/reset` `{}`: clear faults, close every watch, forget objects and history (the
  resourceVersion keeps increasing, so resuming watchers get 410 and re-list); the CRDs installed at
  start are installed again, those installed later are gone. → `{"resourceVersion"}`.
"""
