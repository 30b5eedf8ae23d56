"""``kabanero-otc doctor``: every dependency and setting a deployment needs, one line each with the fix.

Checks only read: a passive declare for the topology, index listings, GETs and a token request
against IAM, an authenticated PATCH of a sid that does not exist against broker-api (a 4xx changes
nothing). Exit code 2 when a dependency is unreachable, 1 when one is reachable but wrong, else 0.

Each step of :class:`Doctor` probes one dependency (I/O) and hands what it saw to a pure judgement
(``identity_check``, ``rbac_check``, ``iam_check``, ``broker_auth_check``) that makes the
:class:`Check`; :func:`verdict` and :func:`render` make the report. The Kubernetes permissions a
service needs are data (:data:`RBAC_CHECKS`): another family's RBAC is another entry.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import aio_pika
import aiohttp
from kubernetes_asyncio import client as kube
from kubernetes_asyncio.client.exceptions import ApiException
from pymongo.errors import PyMongoError

from kotc_cli.clients import Sources, get_json
from kotc_cli.errors import OK, PROBLEM, USAGE, CliError
from kotc_cli.otc import writer_settings
from kotc_cli.output import Report
from services.broker_api.store import COLLECTION as SERVICE_INSTANCES
from services.github_linker.store import SERVICES as LINKER_SERVICES
from services.github_linker.store import TOOLS as LINKER_TOOLS
from services.kabanero_watcher.identity import COLLECTION as CLUSTERS
from services.kabanero_watcher.identity import IDENTITY_NAMESPACE, recorded_identity
from services.kabanero_watcher.kube import make_api_client
from services.kabanero_watcher.lease import GROUP, PLURAL, VERSION
from services.kabanero_watcher.resources import ResourceSpec
from services.kabanero_watcher.settings import Settings as WatcherSettings
from services.kabanero_watcher.state import COLLECTION as WATCH_STATE
from services.kabanero_watcher.tekton_family import InstallKinds, tekton_kinds
from services.otc_writer.ledger import LEDGER
from services.otc_writer.otc_client import IamTokenManager, OtcError, OtcPermanentError
from services.otc_writer.projection import CARDS as WRITER_CARDS
from services.otc_writer.projection import SERVICES as WRITER_SERVICES
from services.otc_writer.projection import TRIGGERS as WRITER_TRIGGERS
from shared.amqp.topology import DEAD_EXCHANGE, EXCHANGE, QUEUES, Topology

Outcome = Literal["ok", "problem", "unreachable", "skipped"]

EXPECTED_INDEXES: dict[str, list[tuple[tuple[str, int], ...]]] = {
    SERVICE_INSTANCES: [(("outbox.id", 1),), (("kind", 1), ("instance_id", 1))],
    WATCH_STATE: [(("cluster", 1), ("namespace", 1))],
    LEDGER: [(("purpose", 1), ("key", 1), ("toolchain_id", 1)), (("purpose", 1), ("scope", 1))],
    WRITER_TRIGGERS: [(("scope", 1),)],
    WRITER_CARDS: [(("scope", 1),)],
    WRITER_SERVICES: [(("scope", 1),)],
    LINKER_SERVICES: [(("toolchains", 1),), (("instance", 1),)],
    LINKER_TOOLS: [(("toolchain_id", 1),)],
}
"""Secondary indexes each service creates at start (``tests/e2e/test_cli.py`` keeps this in step)."""


@dataclass
class Check:
    name: str
    outcome: Outcome
    detail: str
    fix: str = ""


Where = Literal["cluster", "lease", "watched", "install"]


@dataclass(frozen=True)
class Access:
    """One kind a service's RBAC must let it list, and where: cluster-wide, in the watcher's lease
    namespace, in each watched namespace (``WATCH_NAMESPACES``; none: cluster-wide), or in each
    Tekton install namespace (``TEKTON_INSTALL_NAMESPACES``)."""

    group: str
    version: str
    plural: str
    where: Where = "cluster"
    verbs: tuple[str, ...] = ("get", "list", "watch")
    """What the rule to grant names (the watcher lists, then watches)."""

    @property
    def resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(frozen=True)
class Request:
    """One list request (``limit=1``) of an :class:`Access`."""

    access: Access
    namespace: str | None

    @property
    def what(self) -> str:
        return f"list {self.access.resource}" + (f" in {self.namespace}" if self.namespace else "")

    @property
    def path(self) -> str:
        a = self.access
        base = f"/apis/{a.group}/{a.version}" if a.group else f"/api/{a.version}"
        return base + (f"/namespaces/{self.namespace}" if self.namespace else "") + f"/{a.plural}"

    @property
    def rule(self) -> str:
        """The RBAC rule that allows it, exactly as the Role or ClusterRole must hold it."""
        a = self.access
        holder = f"Role in {self.namespace}" if self.namespace else "ClusterRole"
        return (
            f"{holder}: apiGroups [{a.group or chr(34) * 2}], resources [{a.plural}], "
            f"verbs [{', '.join(a.verbs)}]"
        )


def requests(access: tuple[Access, ...], settings: WatcherSettings) -> list[Request]:
    out = []
    for a in access:
        namespaces: tuple[str | None, ...] = {
            "cluster": (None,),
            "lease": (settings.lease_namespace,),
            "watched": settings.watch_namespaces or (None,),
            "install": settings.tekton_install_namespaces,
        }[a.where]
        out += [Request(a, ns) for ns in namespaces]
    return out


WATCHER_ACCESS = (
    Access("kabanero.io", "v1alpha2", "kabaneros"),
    Access("events.kabanero.io", "v1alpha1", "eventmediators"),
)
LEASE_ACCESS = (Access(GROUP, VERSION, PLURAL, where="lease", verbs=("get", "create", "update")),)


def tekton_access(specs: tuple[ResourceSpec, ...]) -> tuple[Access, ...]:
    """The watcher's Tekton kinds as list requests: each group a kind may be served in (RBAC rules
    name groups, and Triggers moved from ``tekton.dev`` to ``triggers.tekton.dev``)."""
    out: dict[tuple[str, str, str], Access] = {}
    for spec in specs:
        where: Where = (
            "cluster" if spec.cluster_scoped else "install" if spec.namespaces is not None else "watched"
        )
        for group, version in ((spec.group, spec.version), *spec.alternatives):
            out.setdefault((group, spec.plural, where), Access(group, version, spec.plural, where))
    return tuple(out.values())


TEKTON_ACCESS = tekton_access(tekton_kinds(InstallKinds.of(())))
"""The install namespaces' kinds are listed in each ``TEKTON_INSTALL_NAMESPACES`` (``where``)."""


@dataclass(frozen=True)
class RbacCheck:
    name: str
    access: tuple[Access, ...]
    ok: str
    fix: str
    family: str | None = None
    """Checked only when the watcher's ``WATCH_FAMILIES`` names it (None: always)."""


RBAC_CHECKS = (
    RbacCheck(
        "watcher lease rbac",
        LEASE_ACCESS,
        "get/create/update on its Lease",
        "apply k8s/ (Role kabanero-watcher-lease: create leases; get/update the watcher's Lease)",
    ),
    RbacCheck(
        "watcher rbac",
        WATCHER_ACCESS,
        "get/list/watch on the Kabanero CRDs",
        "apply k8s/ (ClusterRole kabanero-watcher: get/list/watch kabaneros, eventmediators, "
        "eventconnections)",
        family="kabanero",
    ),
    RbacCheck(
        "watcher tekton rbac",
        TEKTON_ACCESS,
        "get/list/watch on the Tekton kinds (a 404: not installed, fine)",
        "grant the watcher's ServiceAccount get/list/watch on what it reads of Tekton (k8s/)",
        family="tekton",
    ),
)
"""What a service's Kubernetes RBAC must allow, one check each (another family: another entry)."""


def applicable(families: tuple[str, ...]) -> tuple[list[RbacCheck], list[RbacCheck]]:
    """The checks a watcher of ``families`` (its ``WATCH_FAMILIES``) needs, and the ones it does not:
    a Tekton-only watcher is granted no Kabanero kind, and must not be told it lacks them."""
    run = [c for c in RBAC_CHECKS if c.family is None or c.family in families]
    return run, [c for c in RBAC_CHECKS if c not in run]


@dataclass(frozen=True)
class Denied:
    what: str
    rule: str


def denial(what: str, status: int | None) -> str | None:
    """How a refused list request shows; None when it is fine (an absent optional CRD answers 404)."""
    if status in (401, 403):
        return what
    return None if status == 404 else f"{what} (HTTP {status})"


async def denials(api_client: kube.ApiClient, wanted: list[Request]) -> list[Denied]:
    denied = []
    for request in wanted:
        try:
            await api_client.call_api(
                request.path,
                "GET",
                query_params=[("limit", 1)],
                response_types_map={200: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=5,
            )
        except ApiException as exc:
            if (why := denial(request.what, exc.status)) is not None:
                denied.append(Denied(why, request.rule))
    return denied


def rbac_check(rbac: RbacCheck, denied: list[Denied]) -> Check:
    """Each denied request named, and the exact rules that would allow them."""
    if denied:
        rules = "; ".join(dict.fromkeys(d.rule for d in denied))
        return Check(
            rbac.name,
            "problem",
            f"denied: {', '.join(d.what for d in denied)}",
            f"{rbac.fix}; grant: {rules}",
        )
    return Check(rbac.name, "ok", rbac.ok)


def identity_check(cluster: str, recorded: str | None, uid: str) -> Check:
    """``CLUSTER_NAME`` against the kube-system uid the first watcher that led it recorded."""
    if recorded is None:
        return Check("cluster identity", "ok", f"{cluster} = kube-system uid {uid} (not recorded yet)")
    if recorded == uid:
        return Check("cluster identity", "ok", f"{cluster} = kube-system uid {uid}, as recorded")
    return Check(
        "cluster identity",
        "problem",
        f"CLUSTER_NAME {cluster} is recorded for cluster {recorded}, this API server is {uid}",
        f"give each cluster its own CLUSTER_NAME (or delete {CLUSTERS}/{cluster} after a rebuild)",
    )


def iam_check(exc: OtcError, iam_url: str) -> Check:
    """IAM refusing the key is a problem with it; anything else is IAM unreachable."""
    if isinstance(exc, OtcPermanentError) or exc.status in (400, 401, 403):
        return Check("otc iam", "problem", str(exc), "check OTC_API_KEY (IAM refused it)")
    return Check("otc iam", "unreachable", f"{iam_url}: {exc}", "check OTC_IAM_URL and the network")


BROKER_NAME = re.compile(r"[a-z][a-z-]{0,62}")


def served_broker(status: object) -> str:
    """The first broker the deployment serves, from broker-api's ``/status`` body (a Tekton-only
    install has no ``kabanero-broker``); ``kabanero-broker`` when it does not say."""
    brokers = status.get("brokers") if isinstance(status, dict) else None
    first = brokers[0] if isinstance(brokers, list) and brokers else None
    return first if isinstance(first, str) and BROKER_NAME.fullmatch(first) else "kabanero-broker"


def broker_auth_check(base: str, anonymous: int, authed: int) -> Check:
    """broker-api must refuse an anonymous PATCH (401) and accept the CLI's credentials (not 401)."""
    if anonymous != 401:
        return Check(
            "broker-api auth",
            "problem",
            f"an unauthenticated PATCH got HTTP {anonymous}, not 401",
            "broker-api must require BROKER_ID:BROKER_SECRET",
        )
    if authed == 401:
        return Check(
            "broker-api auth",
            "problem",
            "BROKER_ID/BROKER_SECRET given to the CLI are refused",
            "use the same BROKER_ID/BROKER_SECRET as broker-api and OTC's broker registration",
        )
    return Check("broker-api auth", "ok", f"{base}: credentials accepted, anonymous refused")


class Doctor:
    """Runs the checks in order; each adds its :class:`Check` lines (the later ones may use what an
    earlier one read, e.g. the recorded cluster identity)."""

    def __init__(self, src: Sources) -> None:
        self.src = src
        self.config = src.config
        self.checks: list[Check] = []
        self.recorded_uid: str | None = None
        """kube-system uid recorded for CLUSTER_NAME by the first watcher that led it."""

    def add(self, name: str, outcome: Outcome, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, outcome, detail, fix if outcome != "ok" else ""))

    async def guarded(self, name: str, fix: str, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except CliError as exc:
            self.add(name, "unreachable", str(exc), fix)

    # --- settings ---------------------------------------------------------------------------

    def settings(self) -> None:
        c = self.config
        missing = [k for k in ("BROKER_ID", "BROKER_SECRET") if not c.get(k)]
        self.add(
            "broker credentials",
            "problem" if missing else "ok",
            f"{', '.join(missing)} not set" if missing else f"BROKER_ID {c.get('BROKER_ID')}, secret set",
            "set BROKER_ID and BROKER_SECRET (the Basic credentials OTC calls broker-api with)",
        )
        key = c.get("CREDENTIALS_KEY")
        if key is None:
            self.add(
                "credentials key",
                "skipped",
                "CREDENTIALS_KEY not given to the CLI (broker-api checks it at start)",
            )
        else:
            try:
                valid = len(base64.urlsafe_b64decode(key.encode())) == 32
            except (binascii.Error, ValueError):
                valid = False
            self.add(
                "credentials key",
                "ok" if valid else "problem",
                "CREDENTIALS_KEY is a 32-byte urlsafe-base64 key"
                if valid
                else "CREDENTIALS_KEY is not a Fernet key",
                "generate one: python -c 'import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode())'",
            )

    # --- RabbitMQ ---------------------------------------------------------------------------

    async def rabbitmq(self) -> None:
        topo = Topology()
        names = [
            n
            for q in QUEUES
            for n in (q, f"{q}.dead", *(f"{q}.retry.{d}s" for d in sorted(set(topo.retry_delays_s))))
        ]
        conn = await self.src.amqp()
        self.add("rabbitmq", "ok", f"connected to {self.config.safe('AMQP_URL')}")
        absent = []
        for kind, name in [
            ("exchange", EXCHANGE),
            ("exchange", DEAD_EXCHANGE),
            *(("queue", n) for n in names),
        ]:
            channel = await conn.channel()
            try:
                if kind == "exchange":
                    await channel.declare_exchange(name, passive=True)
                else:
                    await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                absent.append(f"{kind} {name}")
            finally:
                if not channel.is_closed:
                    await channel.close()
        self.add(
            "rabbitmq topology",
            "problem" if absent else "ok",
            f"missing: {', '.join(absent)}" if absent else f"2 exchanges and {len(names)} queues declared",
            "start any kabanero-otc service once: each declares the whole topology at start",
        )

    # --- MongoDB ----------------------------------------------------------------------------

    async def mongodb(self) -> None:
        db = await self.src.db()
        self.add("mongodb", "ok", f"database {db.name} at {self.config.safe('MONGODB_URL')}")
        lacking = []
        for coll, wanted in EXPECTED_INDEXES.items():
            have = {
                tuple((k, int(v)) for k, v in ix["key"].items()) async for ix in await db[coll].list_indexes()
            }
            lacking += [f"{coll}({', '.join(k for k, _ in w)})" for w in wanted if w not in have]
        self.add(
            "mongodb indexes",
            "problem" if lacking else "ok",
            f"missing: {', '.join(lacking)}"
            if lacking
            else f"{sum(map(len, EXPECTED_INDEXES.values()))} indexes present",
            "start each service once (each creates its indexes at start) against this database",
        )
        recorded = await recorded_identity(db, self.config.require("CLUSTER_NAME"))
        self.recorded_uid = recorded.uid if recorded else None

    # --- Kubernetes -------------------------------------------------------------------------

    async def kubernetes(self) -> None:
        c = self.config
        settings = WatcherSettings(
            kube_api_url=c.get("KUBE_API_URL"),
            cluster_name=c.require("CLUSTER_NAME"),
            lease_namespace=c.require("LEASE_NAMESPACE"),
            watch_families=c.settings.watch_families,
            watch_namespaces=c.settings.watch_namespaces,
            tekton_install_namespaces=c.settings.tekton_install_namespaces,
        )
        try:
            api_client = await make_api_client(settings)
        except Exception as exc:
            self.add(
                "kubernetes api",
                "unreachable",
                f"no Kubernetes configuration: {exc}",
                "set KUBE_API_URL, or KUBECONFIG / in-cluster service account",
            )
            return
        async with api_client:
            if await self.kube_version(api_client):
                run, skipped = applicable(settings.watch_families)
                for rbac in skipped:
                    self.add(rbac.name, "skipped", f"{rbac.family} is not in WATCH_FAMILIES")
                for rbac in run:
                    wanted = requests(rbac.access, settings)
                    self.checks.append(rbac_check(rbac, await denials(api_client, wanted)))
                await self.cluster_identity(api_client)

    async def kube_version(self, api_client: kube.ApiClient) -> bool:
        """The API server answers ``/version`` (False, with the check added, when it does not)."""
        try:
            version = await api_client.call_api(
                "/version",
                "GET",
                response_types_map={200: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=5,
            )
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.add(
                "kubernetes api",
                "unreachable",
                f"{api_client.configuration.host}: {_short(exc)}",
                "check KUBE_API_URL / the kubeconfig and that the API server is up",
            )
            return False
        git = version.get("gitVersion") if isinstance(version, dict) else "?"
        self.add("kubernetes api", "ok", f"{api_client.configuration.host} (version {git})")
        return True

    async def cluster_identity(self, api_client: kube.ApiClient) -> None:
        try:
            ns = await kube.CoreV1Api(api_client).read_namespace(IDENTITY_NAMESPACE, _request_timeout=5)
        except ApiException as exc:
            self.add(
                "cluster identity",
                "problem",
                f"cannot read namespace {IDENTITY_NAMESPACE}: HTTP {exc.status}",
                "allow the watcher get on namespaces/kube-system (cluster identity)",
            )
            return
        self.checks.append(
            identity_check(self.config.require("CLUSTER_NAME"), self.recorded_uid, ns.metadata.uid)
        )

    # --- OTC ---------------------------------------------------------------------------------

    async def otc(self) -> None:
        c = self.config
        if not c.get("OTC_API_KEY"):
            self.add("otc iam", "problem", "OTC_API_KEY not set", "set OTC_API_KEY (an IBM Cloud API key)")
            return
        settings = writer_settings(c)
        session = await self.src.http()
        iam = IamTokenManager(
            session, settings.otc_iam_url, settings.otc_api_key.get_secret_value(), timeout_s=5
        )
        try:
            await iam.token()
            self.add("otc iam", "ok", f"token for the API key from {settings.otc_iam_url}")
        except OtcError as exc:
            self.checks.append(iam_check(exc, settings.otc_iam_url))
        try:
            async with session.get(settings.otc_api_url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                self.add("otc toolchain api", "ok", f"{settings.otc_api_url} answers (HTTP {resp.status})")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.add(
                "otc toolchain api",
                "unreachable",
                f"{settings.otc_api_url}: {_short(exc)}",
                "check OTC_API_URL and the network",
            )

    # --- broker-api --------------------------------------------------------------------------

    async def broker(self) -> None:
        c = self.config
        base = c.services["broker-api"][0]
        session = await self.src.http()
        _, status = await get_json(session, f"{base}/status")
        url = f"{base}/{served_broker(status)}/api/v1/service_instances/kotc-doctor-probe"
        auth = aiohttp.BasicAuth(c.get("BROKER_ID") or "", c.get("BROKER_SECRET") or "")
        try:
            statuses = []
            for credentials in (None, auth):
                async with session.patch(
                    url, json={}, auth=credentials, timeout=aiohttp.ClientTimeout(total=5)
                ) as resp:
                    statuses.append(resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.add(
                "broker-api",
                "unreachable",
                f"{base}: {_short(exc)}",
                "start broker-api / check KOTC_BROKER_API_URL",
            )
            return
        self.checks.append(broker_auth_check(base, *statuses))

    async def run(self) -> None:
        self.settings()
        await self.guarded("rabbitmq", "check AMQP_URL and that RabbitMQ runs", self.rabbitmq)
        await self.guarded("mongodb", "check MONGODB_URL and that MongoDB runs", self.mongodb)
        await self.kubernetes()
        await self.otc()
        await self.broker()


def verdict(checks: list[Check]) -> int:
    """2 when a dependency is unreachable, 1 when one is reachable but wrong, else 0."""
    outcomes = {c.outcome for c in checks}
    return USAGE if "unreachable" in outcomes else PROBLEM if "problem" in outcomes else OK


def render(checks: list[Check], *, source: str) -> Report:
    report = Report(data={"source": source, "checks": [c.__dict__ for c in checks]}, code=verdict(checks))
    report.add(
        f"DOCTOR (settings from {source})",
        ("check", "result", "detail", "fix"),
        [(c.name, c.outcome.upper() if c.outcome != "ok" else "ok", c.detail, c.fix) for c in checks],
    )
    bad = [c.name for c in checks if c.outcome in ("problem", "unreachable")]
    unreachable = [c.name for c in checks if c.outcome == "unreachable"]
    report.line(
        "all checks passed"
        if not bad
        else f"{len(bad)} check(s) failed"
        + (f"; unreachable: {', '.join(unreachable)}" if unreachable else "")
    )
    return report


async def run(src: Sources) -> Report:
    doctor = Doctor(src)
    try:
        await doctor.run()
    except PyMongoError as exc:
        doctor.add("mongodb", "unreachable", _short(exc), "check MONGODB_URL")
    return render(doctor.checks, source=src.config.source)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
