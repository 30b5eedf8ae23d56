"""``kabanero-otc`` against the whole stack as real processes (what ``make run`` starts).

The CLI runs as the installed console script, in a directory below the stack's ``.run/`` with the
services' variables removed from its environment: it finds everything in the run file, as after
``make run``. One stack serves the module; the tests run in file order and build on each other
(provisioned services, then a dead letter, then a dependency taken down).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
import yaml

from emulators.otc.platform import OtcPlatform
from kotc_cli.config import KEYS, SERVICE_ENV
from scripts.driver import BROKERS, Driver
from scripts.stack import BROKER_ID, SERVICES, Stack, write_run_file
from services.otc_writer.desired import trigger_tool_name
from shared.events import TriggerKey
from shared.health import VERSION
from tests.conftest import _mgmt

pytestmark = pytest.mark.e2e
CLI = Path(sys.executable).parent / "kabanero-otc"
OTC_PREFIX = "/toolchain/v2"
TEKTON_SID = "cli-tekton"


class Env:
    def __init__(self, stack: Stack, cwd: Path) -> None:
        self.stack = stack
        self.cwd = cwd
        self.toolchain = ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in KEYS and k not in SERVICE_ENV.values()}
        env.pop("KOTC_RUN_FILE", None)
        return subprocess.run(
            [str(CLI), *args], cwd=self.cwd, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    def json(self, *args: str) -> tuple[int, dict[str, Any]]:
        proc = self.cli("--json", *args)
        assert proc.stdout.strip(), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    async def otc(self, method: str, path: str, body: Any = None) -> Any:
        """The Toolchain API as a user calls it."""
        async with aiohttp.ClientSession() as s:
            return (await Driver(self.stack, s).otc_api(method, path, body))[1]

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as s:
            return await Driver(self.stack, s).request(method, f"{self.stack.url('otc')}{path}", body)

    async def tools(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s:
            return await Driver(self.stack, s, toolchain=self.toolchain).tools()

    async def set_mediations(self, change: Any) -> None:
        """The seeded EventMediator's mediations become ``change(current mediations)``."""
        async with aiohttp.ClientSession() as s:
            d = Driver(self.stack, s)
            current = (await d.kube("GET", "mediator"))["spec"]["mediations"]
            await d.kube("PATCH", "mediator", {"spec": {"mediations": change(current)}})

    async def writes(self) -> int:
        """OTC writes so far (scripts.driver.is_tool_write)."""
        async with aiohttp.ClientSession() as s:
            return len((await Driver(self.stack, s).calls())[1])


def _extra(current: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """One more mediation like the first, named (and matching) ``name``."""
    return {**current[0], "name": name, "selector": {"urlPattern": name}}


async def _wait(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.3)


async def _dead_letters(
    env: Env, queue: str | None = None, *, min_count: int = 0, max_count: int | None = None
) -> bool:
    """The dead letters of ``queue`` (default: of every consuming queue) are within the bounds, as
    RabbitMQ counts them (a passive declare). What the waits poll: one connection instead of a
    CLI process each poll; the CLI's answer is asserted once the count is reached."""
    depths = await env.stack.queue_depths()
    wanted = [f"{queue}.dead"] if queue else [f"{q}.dead" for q in env.stack.queues]
    dead = sum(depths[name] for name in wanted)
    return dead >= min_count and (max_count is None or dead <= max_count)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("cli")
    vhost = f"kotc-test-cli-{uuid.uuid4().hex[:8]}"
    stack = Stack(vhost, logs=root / ".run")
    try:
        asyncio.run(stack.start())
        write_run_file(stack)
        (root / "work").mkdir()
        yield Env(stack, root / "work")
    finally:
        stack.stop()
        _mgmt("DELETE", f"vhosts/{urllib.parse.quote(vhost, safe='')}")


def test_usage_errors_exit_2(env: Env) -> None:
    assert env.cli().returncode == 2
    proc = env.cli("dead-letters", "replay")
    assert proc.returncode == 2 and "--id" in proc.stderr
    proc = env.cli("dead-letters", "list", "--queue", "nope")
    assert proc.returncode == 2 and "not a consuming queue" in proc.stderr


def test_status_shows_services_bindings_and_owned_tools(env: Env) -> None:
    async def provision() -> None:
        env.toolchain = (await env.control("POST", "/_emulator/toolchains", {"name": "cli-toolchain"}))["id"]
        params = {"cluster": "default", "namespace": "kabanero"}
        async with OtcPlatform(env.stack.url("broker"), BROKER_ID, env.stack.broker_secret) as otc:
            for broker, sid in BROKERS:
                assert (await otc.provision(broker, sid, parameters=params)).status == 200
                assert (await otc.bind(broker, sid, env.toolchain)).status == 204
            # A Tekton service mirroring the seeded namespace (2 Pipelines, 1 EventListener).
            tekton = {"cluster": "default", "namespaces": ["kabanero"]}
            assert (await otc.provision("tekton-broker", TEKTON_SID, parameters=tekton)).status == 200
            assert (await otc.bind("tekton-broker", TEKTON_SID, env.toolchain)).status == 204

        async def converged() -> bool:
            kinds = [t["tool_type_id"] for t in await env.tools()]
            # 2 trigger tools and 3 Tekton cards (both customtool), the GitHub tool(s).
            return kinds.count("customtool") == 5 and kinds.count("githubconsolidated") >= 1

        await _wait(converged, "tools in OTC")
        await env.stack.quiet()

    asyncio.run(provision())
    code, status = env.json("status")
    assert code == 0, status["problems"]
    assert {s["service"] for s in status["services"] if s["live"] and s["ready"]} == {
        "broker-api",
        "kabanero-watcher",
        "otc-writer",
        "github-linker",
    }
    assert {
        (i["kind"], i["instance_id"], i["cluster"], i["namespace"], tuple(i["toolchains"]))
        for i in status["kabanero_services"]
    } == {
        ("kabanero-events", "demo-events", "default", "kabanero", (env.toolchain,)),
        ("kabanero", "demo-kabanero", "default", "kabanero", (env.toolchain,)),
    }
    in_otc = {t["name"] for t in asyncio.run(env.tools())}
    owned = {
        t["name"] for t in status["tools"] if t["state"] == "applied" and t["toolchain_id"] == env.toolchain
    }
    assert owned == in_otc and len(owned) >= 6
    assert all(q["consumers"] == 1 and q["dead"] == 0 for q in status["queues"])
    # Tekton: the service (its filter, its bindings as broker-api and otc-writer hold them, the
    # cards otc-writer mirrors for it), the cluster's installation and the card tools' sync state.
    (service,) = status["tekton_services"]
    assert service == {
        "instance_id": TEKTON_SID,
        "cluster": "default",
        "namespaces": ["kabanero"],
        "toolchains": [env.toolchain],
        "writer_toolchains": [env.toolchain],
        "cards": {"kabanero": 3},
    }
    (installation,) = status["tekton_installations"]
    assert installation["cluster"] == "default" and installation["found"], installation
    assert installation["pipelines_version"] == "v0.11.3"
    assert installation["controller_namespace"] == "openshift-pipelines"
    assert installation["cards"] == {"kabanero": 3} and installation["services"] == [TEKTON_SID]
    assert installation["tools"] == {"applied": 3}
    cards = [t for t in status["tools"] if t["purpose"] == "tekton"]
    assert len(cards) == 3 and {t["state"] for t in cards} == {"applied"}
    human = env.cli("status")
    assert human.returncode == 0 and "TOOLS OWNED BY KABANERO-OTC" in human.stdout
    assert "TEKTON SERVICES" in human.stdout and "TEKTON INSTALLATIONS" in human.stdout
    assert "pipelines v0.11.3" in human.stdout and "applied=3" in human.stdout
    assert all(name[:60] in human.stdout for name in owned)


def test_plan_writes_nothing_and_shows_a_tool_deleted_by_hand(env: Env) -> None:
    code, plan = env.json("plan")
    assert code == 0 and plan["changes"] == 0, plan
    assert {s["action"] for s in plan["steps"]} == {"unchanged"}
    # Trigger tools and Tekton cards are computed from otc-writer's projection, as it does.
    by_kind = {k: [s for s in plan["steps"] if s["purpose"] == k] for k in ("trigger", "tekton")}
    assert (len(by_kind["trigger"]), len(by_kind["tekton"])) == (2, 3)
    victims = {by_kind["trigger"][0]["tool_id"], by_kind["tekton"][0]["tool_id"]}
    for tool_id in victims:
        asyncio.run(env.otc("DELETE", f"{OTC_PREFIX}/toolchains/{env.toolchain}/tools/{tool_id}"))
    before = asyncio.run(env.writes())
    code, plan = env.json("plan", "--toolchain", env.toolchain)
    assert code == 1
    assert sorted(
        (s["action"], s["purpose"], s["name"]) for s in plan["steps"] if s["action"] != "unchanged"
    ) == [
        ("create", "tekton", by_kind["tekton"][0]["name"]),
        ("create", "trigger", by_kind["trigger"][0]["name"]),
    ]
    assert asyncio.run(env.writes()) == before  # plan wrote nothing
    human = env.cli("plan")
    assert human.returncode == 1 and "would change: 2 create" in human.stdout


def test_dead_letter_listed_replayed_and_purged(env: Env) -> None:
    # The API key may not create tools (403, not a refusal of the content): the event dead-letters.
    asyncio.run(
        env.control(
            "POST",
            "/_emulator/faults",
            {
                "rules": [
                    {
                        "path": ".*/tools",
                        "method": "POST",
                        "status": 403,
                        "message": "not authorized to create tools",
                    }
                ]
            },
        )
    )

    async def add_mediation() -> None:
        await env.set_mediations(lambda current: [*current, _extra(current, "cli-extra")])

    asyncio.run(add_mediation())

    asyncio.run(_wait(lambda: _dead_letters(env, min_count=1), "a dead letter"))
    code, listed = env.json("dead-letters", "list")
    assert code == 1
    (letter,) = [d for d in listed["dead_letters"] if d["type"] == "io.kabanero.otc.kabanero.trigger.created"]
    assert letter["queue"] == "otc-writer.events.dead" and letter["reason"] == "permanent error"
    assert "403" in letter["error"] or "not authorized" in letter["error"]
    assert letter["attempts"] == 1 and letter["subject"]
    code, status = env.json("status")
    assert code == 1 and any("dead letter" in p for p in status["problems"])
    # Listing consumed nothing: every letter listed is still there, in the same order (more may have
    # arrived meanwhile, e.g. the instance's snapshot meeting the same 403).
    again = [d["id"] for d in env.json("dead-letters", "list")[1]["dead_letters"]]
    first = [d["id"] for d in listed["dead_letters"]]
    assert [i for i in again if i in first] == first

    asyncio.run(env.control("DELETE", "/_emulator/faults"))
    proc = env.cli("dead-letters", "replay", "--id", letter["id"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert letter["id"] in proc.stdout

    async def replayed() -> bool:
        return any("cli-extra" in (t["name"] or "") for t in await env.tools())

    asyncio.run(_wait(replayed, "the replayed trigger's tool in OTC"))
    assert letter["id"] not in {d["id"] for d in env.json("dead-letters", "list")[1]["dead_letters"]}
    # Whatever else met the 403 meanwhile (a periodic snapshot, say) goes back too, and now succeeds.
    code, out = env.json("dead-letters", "replay", "--all")
    assert code == 0 and all(r["to"] for r in out["replayed"])

    asyncio.run(_wait(lambda: _dead_letters(env, max_count=0), "no dead letters after the replays"))
    assert env.json("dead-letters", "list") == (0, {"vhost": env.stack.vhost, "dead_letters": []})

    async def garbage() -> None:
        conn = await aio_pika.connect(env.stack.amqp_url)
        try:
            ch = await conn.channel()
            await ch.default_exchange.publish(
                aio_pika.Message(b"not a CloudEvent", message_id="junk-1"), "github-linker.events"
            )
        finally:
            await conn.close()

    asyncio.run(garbage())

    asyncio.run(_wait(lambda: _dead_letters(env, "github-linker.events", min_count=1), "junk dead-lettered"))
    listed = env.json("dead-letters", "list", "--queue", "github-linker.events")[1]["dead_letters"]
    assert [d["id"] for d in listed] == ["junk-1"], listed
    proc = env.cli("dead-letters", "purge", "--queue", "github-linker.events")
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert env.json("dead-letters", "list")[0] == 1  # still there
    code, purged = env.json("dead-letters", "purge", "--queue", "github-linker.events", "--yes")
    assert code == 0 and purged["purged"] == {"github-linker.events.dead": 1}
    assert env.json("dead-letters", "list") == (0, {"vhost": env.stack.vhost, "dead_letters": []})


def test_dead_letters_of_the_watchers_command_queue(env: Env) -> None:
    """``kabanero-watcher.<cluster>.instances`` (Kabanero services that create their CR) is a
    consuming queue like the others: its dead letters are listed, counted by status and purged."""
    queue = "kabanero-watcher.default.instances"

    async def garbage() -> None:
        conn = await aio_pika.connect(env.stack.amqp_url)
        try:
            ch = await conn.channel()
            await ch.default_exchange.publish(
                aio_pika.Message(b"not a CloudEvent", message_id="junk-watcher"), queue
            )
        finally:
            await conn.close()

    asyncio.run(garbage())

    asyncio.run(_wait(lambda: _dead_letters(env, queue, min_count=1), "junk dead-lettered by the watcher"))
    listed = env.json("dead-letters", "list", "--queue", queue)[1].get("dead_letters", [])
    assert any(d["id"] == "junk-watcher" and d["queue"] == f"{queue}.dead" for d in listed), listed
    assert any(d["id"] == "junk-watcher" for d in env.json("dead-letters", "list")[1]["dead_letters"])
    code, status = env.json("status")
    (row,) = [q for q in status["queues"] if q["queue"] == queue]
    assert code == 1 and row["dead"] == 1 and row["consumers"] == 1
    code, purged = env.json("dead-letters", "purge", "--queue", queue, "--yes")
    assert code == 0 and purged["purged"] == {f"{queue}.dead": 1}
    assert env.json("dead-letters", "list") == (0, {"vhost": env.stack.vhost, "dead_letters": []})


def test_a_tool_otc_refuses_shows_as_refused_with_otcs_message(env: Env) -> None:
    key = TriggerKey(
        cluster="default", namespace="kabanero", generation="mediation", owner="webhook", name="cli-refused"
    )
    name = trigger_tool_name(key)
    rule = {
        "path": ".*/tools",
        "method": "POST",
        "name": name,
        "status": 400,
        "message": "tool name not allowed here",
    }
    asyncio.run(env.control("POST", "/_emulator/faults", {"rules": [rule]}))

    async def mediations(add: bool) -> None:
        def change(current: list[dict[str, Any]]) -> list[dict[str, Any]]:
            kept = [m for m in current if m["name"] != "cli-refused"]
            return [*kept, _extra(kept, "cli-refused")] if add else kept

        await env.set_mediations(change)

    asyncio.run(mediations(True))

    async def refused() -> bool:
        return any(t["state"] == "refused" for t in env.json("status")[1]["tools"])

    asyncio.run(_wait(refused, "a refused tool in status"))
    code, status = env.json("status")
    (tool,) = [t for t in status["tools"] if t["state"] == "refused"]
    assert code == 1 and tool["name"] == name and "tool name not allowed here" in tool["detail"]
    assert any(p.startswith(f"OTC refused tool {name!r}") for p in status["problems"])
    human = env.cli("status")
    assert "refused" in human.stdout and "tool name not allowed here" in human.stdout
    code, plan = env.json("plan")
    assert [(s["action"], s["name"]) for s in plan["steps"] if s["action"] == "refused"] == [
        ("refused", name)
    ]

    # The trigger goes away in the cluster: the refused entry is dropped, nothing is left to do.
    asyncio.run(env.control("DELETE", "/_emulator/faults"))
    asyncio.run(mediations(False))

    async def gone() -> bool:
        return not any(t["state"] == "refused" for t in env.json("status")[1]["tools"])

    asyncio.run(_wait(gone, "the refused tool gone with its trigger"))
    assert env.json("dead-letters", "purge", "--yes")[0] == 0


def test_resync_gets_fresh_snapshots_and_waits_for_otc_writer(env: Env) -> None:
    code, out = env.json("resync")
    assert code == 0, out
    assert out["caught_up"] and set(out["leaders"]) == {"default"}
    assert "default/kabanero" in out["snapshots"]
    # The watcher's Tekton family answers too: otc-writer caught up with its card snapshot.
    assert "tekton:default/kabanero" in out["snapshots"]
    again = env.json("resync", "--namespace", "kabanero")[1]
    assert again["snapshots"]["default/kabanero"] > out["snapshots"]["default/kabanero"]
    assert again["snapshots"]["tekton:default/kabanero"] > out["snapshots"]["tekton:default/kabanero"]
    # No watcher of that cluster exists: any bound shows it (the refusal is what is under test).
    code, out = env.json("resync", "--cluster", "elsewhere", "--timeout", "1")
    assert code == 1 and "no leading watcher answered" in out["problems"][0]


ROOT = Path(__file__).resolve().parents[2]
NAME_RE = re.compile(r"\b((?:kotc|process|python)_[a-z0-9_]+)")


def promtool() -> str:
    found = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    if not Path(found).exists():
        pytest.fail("promtool is missing: `make test` installs it (scripts/ensure-promtool.sh)")
    return found


def test_metrics_are_kotc_standard_and_promtool_clean_and_deploy_files_name_them(env: Env) -> None:
    exposed: set[str] = set()
    exposed_lines: list[str] = []

    async def scrape(url: str) -> tuple[str, dict[str, Any]]:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/metrics") as r:
                text = await r.text()
            async with s.get(f"{url}/version") as r:
                return text, await r.json()

    for name, port in SERVICES.items():
        text, version = asyncio.run(scrape(env.stack.url(port)))
        assert version["service"] == name and version["version"] == VERSION
        check = subprocess.run(
            [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
            name,
            check.stdout,
            check.stderr,
        )
        samples = [
            line.split("{")[0].split(" ")[0]
            for line in text.splitlines()
            if line and not line.startswith("#")
        ]
        assert samples and all(s.startswith(("kotc_", "process_", "python_")) for s in samples), name
        assert f'kotc_build_info{{service="{name}",version="{VERSION}"}} 1.0' in text
        assert "process_cpu_seconds_total" in text and "python_gc_objects_collected_total" in text
        exposed_lines += text.splitlines()
        exposed |= set(samples) | {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        first = (env.stack.logs / f"{name}.log").read_text().splitlines()[0]
        assert f"{name} {VERSION} starting" in json.loads(first)["message"], first
    assert any(line == 'kotc_watcher_leader{cluster="default"} 1.0' for line in exposed_lines)
    for needed in (
        "kotc_otc_circuit_breaker_open",
        "kotc_otc_rate_limited_total",
        "kotc_otc_retries_total",
        "kotc_watcher_leader",
        "kotc_broker_api_outbox_backlog",
        "kotc_queue_messages",
    ):
        assert needed in exposed, needed

    def known(name: str) -> bool:
        return name in exposed or any(
            name == t + sfx for t in exposed for sfx in ("_bucket", "_sum", "_count", "_total")
        )

    rules = ROOT / "deploy" / "prometheus" / "kabanero-otc-alerts.yml"
    check = subprocess.run(
        [promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    exprs = [r["expr"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "kabanero-otc-dashboard.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    referenced = {n for e in exprs for n in NAME_RE.findall(e)}
    assert {n for n in referenced if not known(n)} == set()
    assert {
        "kotc_queue_messages",
        "kotc_otc_circuit_breaker_open",
        "kotc_watcher_leader",
        "kotc_broker_api_outbox_backlog",
        "kotc_otc_rate_limited_total",
    } <= referenced


def test_doctor_all_green_then_names_the_dependency_that_is_down(env: Env) -> None:
    code, doc = env.json("doctor")
    assert code == 0, [c for c in doc["checks"] if c["outcome"] != "ok"]
    names = {c["name"] for c in doc["checks"] if c["outcome"] == "ok"}
    assert {
        "rabbitmq",
        "rabbitmq topology",
        "mongodb",
        "mongodb indexes",
        "kubernetes api",
        "watcher lease rbac",
        "watcher rbac",
        "watcher tekton rbac",
        "cluster identity",
        "otc iam",
        "broker-api auth",
    } <= names

    # A wrong setting is a problem (exit 1) with the fix; a dependency down is exit 2.
    code, doc = env.json("doctor", "--set", "BROKER_SECRET=not-the-secret", "--set", "OTC_API_KEY=wrong-key")
    failing = {c["name"]: c for c in doc["checks"] if c["outcome"] != "ok"}
    assert code == 1 and set(failing) == {"broker-api auth", "otc iam"}, failing
    assert all(c["outcome"] == "problem" and c["fix"] for c in failing.values())

    env.stack.kill("kube")
    proc = env.cli("doctor")
    assert proc.returncode == 2, proc.stdout
    assert "unreachable: kubernetes api" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("kubernetes api"))
    assert "UNREACHABLE" in row and "KUBE_API_URL" in row

    # The watcher that lost its API server says so in /readyz, and status reports it.
    async def watcher_not_ready() -> bool:
        code, status = env.json("status")
        watcher = next(s for s in status["services"] if s["service"] == "kabanero-watcher")
        return (
            code == 1
            and not watcher["ready"]
            and "cannot reach the Kubernetes API" in watcher["failing"].get("lease", "")
        )

    asyncio.run(_wait(watcher_not_ready, "watcher not ready", timeout=60))
    # The API server back: the watcher releases its lease at the module's end in a moment, instead of
    # retrying an unreachable one for its whole shutdown deadline (20 s of the stack's stop).
    asyncio.run(env.stack.restart("kube", sig=None))


def test_unreachable_dependency_is_named_with_exit_2(env: Env) -> None:
    proc = env.cli("status", "--set", "RABBITMQ_MGMT_URL=http://127.0.0.1:9")
    assert proc.returncode == 2 and "RabbitMQ management API unreachable at http://127.0.0.1:9" in proc.stderr
    proc = env.cli("dead-letters", "list", "--set", "AMQP_URL=amqp://guest:guest@127.0.0.1:9/x")
    assert proc.returncode == 2 and "RabbitMQ unreachable" in proc.stderr
