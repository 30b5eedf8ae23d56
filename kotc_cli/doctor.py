"""``kabanero-otc doctor``: every dependency and setting a deployment needs, one line each with the fix.

Checks only read: a passive declare for the topology, index listings, GETs and a token request
against IAM, an authenticated PATCH of a sid that does not exist against broker-api (a 4xx changes
nothing). Exit code 2 when a dependency is unreachable, 1 when one is reachable but wrong, else 0.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
import aiohttp
from kubernetes_asyncio import client as kube
from kubernetes_asyncio.client.exceptions import ApiException
from pymongo.errors import PyMongoError

from kotc_cli.clients import amqp, mongo
from kotc_cli.config import Config
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
from services.kabanero_watcher.settings import Settings as WatcherSettings
from services.kabanero_watcher.state import COLLECTION as WATCH_STATE
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


class Doctor:
    def __init__(self, config: Config) -> None:
        self.config = config
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
        async with amqp(self.config) as conn:
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
                f"missing: {', '.join(absent)}"
                if absent
                else f"2 exchanges and {len(names)} queues declared",
                "start any kabanero-otc service once: each declares the whole topology at start",
            )

    # --- MongoDB ----------------------------------------------------------------------------

    async def mongodb(self) -> None:
        async with mongo(self.config) as db:
            self.add("mongodb", "ok", f"database {db.name} at {self.config.safe('MONGODB_URL')}")
            lacking = []
            for coll, wanted in EXPECTED_INDEXES.items():
                have = {
                    tuple((k, int(v)) for k, v in ix["key"].items())
                    async for ix in await db[coll].list_indexes()
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
        settings = WatcherSettings(kube_api_url=c.get("KUBE_API_URL"), cluster_name=c.require("CLUSTER_NAME"))
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
        fix_api = "check KUBE_API_URL / the kubeconfig and that the API server is up"
        async with api_client:
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
                    fix_api,
                )
                return
            self.add(
                "kubernetes api",
                "ok",
                f"{api_client.configuration.host} (version {version.get('gitVersion') if isinstance(version, dict) else '?'})",
            )
            custom = kube.CustomObjectsApi(api_client)
            denied = []
            probes: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                (
                    "list kabaneros.kabanero.io",
                    lambda: custom.list_cluster_custom_object(
                        "kabanero.io", "v1alpha2", "kabaneros", limit=1, _request_timeout=5
                    ),
                ),
                (
                    "list eventmediators.events.kabanero.io",
                    lambda: custom.list_cluster_custom_object(
                        "events.kabanero.io", "v1alpha1", "eventmediators", limit=1, _request_timeout=5
                    ),
                ),
                (
                    f"list leases in {settings.lease_namespace}",
                    lambda: custom.list_namespaced_custom_object(
                        GROUP, VERSION, settings.lease_namespace, PLURAL, limit=1, _request_timeout=5
                    ),
                ),
            ]
            for what, probe in probes:
                try:
                    await probe()
                except ApiException as exc:
                    if exc.status in (401, 403):
                        denied.append(what)
                    elif exc.status != 404:  # an absent optional CRD is fine
                        denied.append(f"{what} (HTTP {exc.status})")
            self.add(
                "watcher rbac",
                "problem" if denied else "ok",
                f"denied: {', '.join(denied)}" if denied else "get/list/watch on the CRDs and leases",
                "apply k8s/ (ClusterRole kabanero-watcher: get/list/watch kabaneros, eventmediators, "
                "eventconnections; get/create/update leases)",
            )
            try:
                ns = await kube.CoreV1Api(api_client).read_namespace(IDENTITY_NAMESPACE, _request_timeout=5)
                uid = ns.metadata.uid
            except ApiException as exc:
                self.add(
                    "cluster identity",
                    "problem",
                    f"cannot read namespace {IDENTITY_NAMESPACE}: HTTP {exc.status}",
                    "allow the watcher get on namespaces/kube-system (cluster identity)",
                )
                return
            recorded = self.recorded_uid
            cluster = self.config.require("CLUSTER_NAME")
            if recorded is None:
                self.add("cluster identity", "ok", f"{cluster} = kube-system uid {uid} (not recorded yet)")
            elif recorded == uid:
                self.add("cluster identity", "ok", f"{cluster} = kube-system uid {uid}, as recorded")
            else:
                self.add(
                    "cluster identity",
                    "problem",
                    f"CLUSTER_NAME {cluster} is recorded for cluster {recorded}, this API server is {uid}",
                    f"give each cluster its own CLUSTER_NAME (or delete {CLUSTERS}/{cluster} after a rebuild)",
                )

    # --- OTC ---------------------------------------------------------------------------------

    async def otc(self) -> None:
        c = self.config
        if not c.get("OTC_API_KEY"):
            self.add("otc iam", "problem", "OTC_API_KEY not set", "set OTC_API_KEY (an IBM Cloud API key)")
            return
        settings = writer_settings(c)
        async with aiohttp.ClientSession() as session:
            iam = IamTokenManager(
                session, settings.otc_iam_url, settings.otc_api_key.get_secret_value(), timeout_s=5
            )
            try:
                await iam.token()
                self.add("otc iam", "ok", f"token for the API key from {settings.otc_iam_url}")
            except OtcError as exc:
                if isinstance(exc, OtcPermanentError) or exc.status in (400, 401, 403):
                    self.add("otc iam", "problem", str(exc), "check OTC_API_KEY (IAM refused it)")
                else:
                    self.add(
                        "otc iam",
                        "unreachable",
                        f"{settings.otc_iam_url}: {exc}",
                        "check OTC_IAM_URL and the network",
                    )
            try:
                async with session.get(settings.otc_api_url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    self.add(
                        "otc toolchain api", "ok", f"{settings.otc_api_url} answers (HTTP {resp.status})"
                    )
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
        async with aiohttp.ClientSession() as session:
            try:
                url = (
                    f"{base}/{await _served_broker(session, base)}/api/v1/service_instances/kotc-doctor-probe"
                )
                async with session.patch(url, json={}, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    anonymous = resp.status
                auth = aiohttp.BasicAuth(c.get("BROKER_ID") or "", c.get("BROKER_SECRET") or "")
                async with session.patch(
                    url, json={}, auth=auth, timeout=aiohttp.ClientTimeout(total=5)
                ) as resp:
                    authed = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.add(
                    "broker-api",
                    "unreachable",
                    f"{base}: {_short(exc)}",
                    "start broker-api / check KOTC_BROKER_API_URL",
                )
                return
        if anonymous != 401:
            self.add(
                "broker-api auth",
                "problem",
                f"an unauthenticated PATCH got HTTP {anonymous}, not 401",
                "broker-api must require BROKER_ID:BROKER_SECRET",
            )
        elif authed == 401:
            self.add(
                "broker-api auth",
                "problem",
                "BROKER_ID/BROKER_SECRET given to the CLI are refused",
                "use the same BROKER_ID/BROKER_SECRET as broker-api and OTC's broker registration",
            )
        else:
            self.add("broker-api auth", "ok", f"{base}: credentials accepted, anonymous refused")

    async def run(self) -> None:
        self.settings()
        await self.guarded("rabbitmq", "check AMQP_URL and that RabbitMQ runs", self.rabbitmq)
        await self.guarded("mongodb", "check MONGODB_URL and that MongoDB runs", self.mongodb)
        await self.kubernetes()
        await self.otc()
        await self.broker()


BROKER_NAME = re.compile(r"[a-z][a-z-]{0,62}")


async def _served_broker(session: aiohttp.ClientSession, base: str) -> str:
    """The first broker the deployment serves (its ``/status`` says which: a Tekton-only install
    has no ``kabanero-broker``); ``kabanero-broker`` when ``/status`` does not say."""
    async with session.get(f"{base}/status", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        try:
            brokers = (await resp.json(content_type=None)).get("brokers")
        except (ValueError, AttributeError):
            brokers = None
    if (
        isinstance(brokers, list)
        and brokers
        and isinstance(brokers[0], str)
        and BROKER_NAME.fullmatch(brokers[0])
    ):
        return brokers[0]
    return "kabanero-broker"


async def run(config: Config) -> Report:
    doctor = Doctor(config)
    try:
        await doctor.run()
    except PyMongoError as exc:
        doctor.add("mongodb", "unreachable", _short(exc), "check MONGODB_URL")
    outcomes = {c.outcome for c in doctor.checks}
    code = USAGE if "unreachable" in outcomes else PROBLEM if "problem" in outcomes else OK
    report = Report(data={"source": config.source, "checks": [c.__dict__ for c in doctor.checks]}, code=code)
    report.add(
        f"DOCTOR (settings from {config.source})",
        ("check", "result", "detail", "fix"),
        [(c.name, c.outcome.upper() if c.outcome != "ok" else "ok", c.detail, c.fix) for c in doctor.checks],
    )
    bad = [c.name for c in doctor.checks if c.outcome in ("problem", "unreachable")]
    unreachable = [c.name for c in doctor.checks if c.outcome == "unreachable"]
    report.line(
        "all checks passed"
        if not bad
        else f"{len(bad)} check(s) failed"
        + (f"; unreachable: {', '.join(unreachable)}" if unreachable else "")
    )
    return report


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
