"""Packaging and deployment files: Dockerfile, docker-compose.yml, k8s/ and the demo sample.

Docker and a cluster are not available where the suite runs, so these checks read the files
structurally and tie them to the code they start: every command names a runnable module with flags
its CLI accepts, every environment variable is a setting the service reads, every required setting
is provided, secrets are referenced (never embedded), and the Kubernetes security posture holds.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.lock import closure
from tests.helpers import kubectl_path

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s" / "base"  # what `kubectl apply -k k8s/` applies; overlays build on it
MULTI = ROOT / "k8s" / "overlays" / "multi-cluster"
TEKTON = ROOT / "k8s" / "overlays" / "tekton"
TEKTON_MULTI = ROOT / "k8s" / "overlays" / "tekton-multi-cluster"
KUBERNETES_VERSION = "1.32.0"  # the schemas the rendered manifests are validated against
SAMPLE = ROOT / "deploy" / "samples" / "kabanero-sample.yaml"

SERVICES = {
    "broker-api": "broker_api",
    "kabanero-watcher": "kabanero_watcher",
    "otc-writer": "otc_writer",
    "github-linker": "github_linker",
}
REPLICAS = {"broker-api": 2, "kabanero-watcher": 2, "otc-writer": 2, "github-linker": 1}
# docker-compose.yml's tekton profile: the Tekton install on its own (no github-linker).
TEKTON_SERVICES = {
    "tekton-broker-api": "broker_api",
    "tekton-watcher": "kabanero_watcher",
    "tekton-otc-writer": "otc_writer",
}
TEKTON_SAMPLE = ROOT / "deploy" / "samples" / "tekton-sample.yaml"
SECRET_NAME = "kabanero-otc-secrets"
SECRET_ENVS = {"AMQP_URL", "MONGODB_URL", "BROKER_ID", "BROKER_SECRET", "CREDENTIALS_KEY", "OTC_API_KEY"}
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")

Doc = dict[str, Any]


def _load_all(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _interpolate(value: str) -> str:
    """Compose-style ``${VAR...}`` substitution with a recognisable stand-in value."""
    return INTERPOLATION.sub(lambda m: f"x-{m.group(1).lower()}", value)


def _settings_fields(module: str) -> tuple[set[str], set[str]]:
    """(every env name the service reads, the ones without a default)."""
    settings_cls = importlib.import_module(f"services.{module}.settings").Settings
    fields = settings_cls.model_fields
    names = {str(f.validation_alias or name).upper() for name, f in fields.items()}
    required = {str(f.validation_alias or name).upper() for name, f in fields.items() if f.is_required()}
    return names, required


def _module_has_main(module: str) -> bool:
    return (ROOT / Path(*module.split(".")) / "__main__.py").is_file()


# --- Dockerfile ---------------------------------------------------------------------------------


def _stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = m.group(1)
            stages[current] = [line]
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def test_dockerfile_production_stage_is_default_non_root_and_without_dev_code() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.13-slim" in text
    stages = _stages()
    assert list(stages)[-1] == "runtime", "the last stage is the default build target"
    runtime = "\n".join(stages["runtime"])
    assert 'ENTRYPOINT ["python", "-m"]' in runtime
    assert 'CMD ["services.broker_api"]' in runtime
    user = re.search(r"^USER\s+(\d+)", runtime, re.MULTILINE)
    assert user and int(user.group(1)) != 0, "numeric non-root user (Kubernetes runAsNonRoot)"
    build = "\n".join(stages["build-runtime"])
    assert "--require-hashes -r requirements-runtime.lock" in build, "runtime dependencies hashed by the lock"
    assert "--no-deps ." in build
    for path in ("emulators", "tests", "bench"):
        assert f"COPY {path}" not in build + runtime, f"{path}/ must not reach the production image"
    assert "COPY --from=build-runtime /opt/venv" in runtime
    dev = "\n".join(stages["build-dev"])
    assert "--require-hashes -r requirements-emulators.lock" in dev and "COPY emulators" in dev
    assert "FROM build-runtime AS build-dev" in (ROOT / "Dockerfile").read_text(), (
        "dev extends the runtime venv"
    )
    # The liveness check is an argv list through the probe module (no shell, no spaces to split).
    health = re.search(r"^HEALTHCHECK .*\n\s*CMD (\[.*\])$", text, re.MULTILINE)
    assert health and json.loads(health.group(1)) == ["python", "-m", "shared.probe", "/healthz"]
    # OCI labels; the version follows the package's.
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}" in runtime
    for label in ("title", "version", "revision", "source"):
        assert f"org.opencontainers.image.{label}=" in runtime


def test_dockerfile_builds_offline_from_the_wheelhouse_with_python3() -> None:
    """No network in the build, and no `python` command assumed: only the official image has one."""
    for stage in ("base", "build-runtime", "build-dev"):
        for run in _run_commands(stage):
            assert not re.search(r"(^|[\s;&|])python\s", run), f"{stage}: `python` is not on Debian: {run}"
    for stage in ("build-runtime", "build-dev"):
        pip_runs = [run for run in _run_commands(stage) if '/pip" ' in run]
        assert len(pip_runs) == 2, "the lock, then the project"
        for run in pip_runs:
            assert run.startswith("RUN --mount=type=bind,source=wheels,target=/wheels "), run
            assert "install --no-index --find-links /wheels" in run, run


def _run_commands(stage: str) -> list[str]:
    """The RUN instructions of a Dockerfile stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
    return [line for line in body.splitlines() if line.startswith("RUN ")]


def test_locks_pin_and_hash_every_distribution_and_runtime_is_a_subset() -> None:
    full = _lock("requirements.lock")
    runtime = _lock("requirements-runtime.lock")
    emulators = _lock("requirements-emulators.lock")
    assert runtime and runtime.items() <= full.items(), "the runtime lock is a subset of the full lock"
    assert runtime.items() < emulators.items() <= full.items(), "the dev image's lock: runtime + emulators"
    assert "mongoeco" in emulators and not {"pytest", "mypy", "ruff", "kubernetes-validate"} & set(emulators)
    # The image runs pip from its wheel and builds the project with setuptools, both offline.
    assert {"pip", "setuptools"} <= set(full)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in declared:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        assert _canonical(name) in runtime, f"{name} (pyproject dependencies) missing from the runtime lock"


def test_the_subset_locks_are_the_closures_make_lock_computes() -> None:
    """The runtime and emulators locks hold exactly the closure of the project's dependencies (and of
    its ``emulators`` extra), as the installed metadata says: a dependency added to pyproject.toml
    without ``make lock`` fails here, not in an image build."""
    assert closure() == set(_lock("requirements-runtime.lock"))
    assert closure(frozenset({"emulators"})) == set(_lock("requirements-emulators.lock"))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """canonical name -> (version, hashes); every entry must have at least one sha256 hash."""
    entries: dict[str, tuple[str, frozenset[str]]] = {}
    text = (ROOT / name).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pin, *options = line.split()
        dist, _, version = pin.partition("==")
        hashes = frozenset(
            o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:")
        )
        assert version and hashes, f"{name}: {pin} is not pinned with a hash"
        entries[_canonical(dist)] = (version, hashes)
    return entries


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    entries = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "tests"} <= entries


# --- docker compose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Doc:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_services_run_the_image_with_infra_env_healthcheck_and_dependencies(compose: Doc) -> None:
    services = compose["services"]
    # Official images, pinned to a version (RabbitMQ: the one `make compose-check` runs).
    assert re.fullmatch(r"rabbitmq:\d+\.\d+\.\d+-management", services["rabbitmq"]["image"])
    assert re.fullmatch(r"mongo:7\.\d+\.\d+", services["mongo"]["image"])
    for infra in ("rabbitmq", "mongo"):
        assert services[infra]["healthcheck"]["test"]
    for name, module in SERVICES.items():
        svc = services[name]
        assert svc["command"] == [f"services.{module}"]
        assert _module_has_main(f"services.{module}")
        assert svc["build"]["target"] == "runtime"
        assert "profiles" not in svc, "the four services run without a profile"
        env = svc["environment"]
        assert env["AMQP_URL"].startswith("amqp://") and "@rabbitmq:5672/" in env["AMQP_URL"]
        assert (
            env["MONGODB_URL"].startswith("mongodb://") and "@mongo:27017/kabanero_otc" in env["MONGODB_URL"]
        )
        assert env["HTTP_PORT"] == "8080"
        assert svc["healthcheck"]["test"] == ["CMD", "python", "-m", "shared.probe", "/readyz"]
        for infra in ("rabbitmq", "mongo"):
            assert svc["depends_on"][infra]["condition"] == "service_healthy"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]


def test_compose_publishes_loopback_ports_each_changeable_by_env(compose: Doc) -> None:
    """A RabbitMQ (or anything) already on 5672, 8080, ... of the host must not stop `up`."""
    env_example = (ROOT / ".env.example").read_text()
    published = 0
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            m = re.fullmatch(r"127\.0\.0\.1:\$\{([A-Z_]+_PORT):-(\d+)\}:(\d+)", port)
            assert m, f"{name}: {port!r} is not 127.0.0.1:${{NAME_PORT:-default}}:container"
            assert f"#{m.group(1)}={m.group(2)}" in env_example, f".env.example does not show {m.group(1)}"
            published += 1
    assert published == 9  # 6 of the default and demo services, 3 of the tekton profile


def test_compose_probe_healthchecks_name_urls_the_probe_accepts(compose: Doc) -> None:
    probe = importlib.import_module("shared.probe")
    for name, svc in compose["services"].items():
        test = svc["healthcheck"]["test"]
        if test[1:4] == ["python", "-m", "shared.probe"]:
            assert len(test) == 5 and " " not in "".join(test), f"{name}: argv without spaces"
            assert probe.url_of(test[4], {}).startswith("http://127.0.0.1:"), name


def test_compose_check_override_only_stands_in_for_the_two_infra_images(compose: Doc) -> None:
    """docker-compose.check.yml: RabbitMQ and MongoDB stand-ins, the stand-in's MongoDB URL, nothing else."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!override", lambda loader, node: loader.construct_sequence(node))  # type: ignore[arg-type]
    override = yaml.load((ROOT / "docker-compose.check.yml").read_text(), Loader=Loader)
    services = override["services"]
    assert set(services) == {"rabbitmq", "mongo", *SERVICES, *TEKTON_SERVICES}
    assert set(services["rabbitmq"]) == {"image"}
    assert services["mongo"]["command"][0] == "emulators.mongo"
    assert services["mongo"]["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "shared.probe"]
    for name in [*SERVICES, *TEKTON_SERVICES]:
        assert services[name] == {
            "environment": {"MONGODB_URL": "mongodb://mongo:27017/kabanero_otc?directConnection=true"}
        }
    # The user's file never names a stand-in.
    assert "CHECK_" not in (ROOT / "docker-compose.yml").read_text()
    assert compose["services"]["mongo"]["image"].startswith("mongo:")


def test_readme_states_the_compose_version_and_the_docker_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "Compose v2.20" in readme and "docker-compose 1." in readme
    assert "python3 -m scripts.wheelhouse" in readme and "docker compose --profile demo up" in readme
    assert "make compose-check" in readme


def test_compose_env_names_are_settings_and_required_ones_are_set(compose: Doc) -> None:
    for name, module in {**SERVICES, **TEKTON_SERVICES}.items():
        known, required = _settings_fields(module)
        env = set(compose["services"][name]["environment"])
        assert env <= known, f"{name}: unknown settings {sorted(env - known)}"
        assert required <= env, f"{name}: required settings missing {sorted(required - env)}"


def test_compose_secrets_come_from_env_file_never_literals(compose: Doc) -> None:
    env_example = (ROOT / ".env.example").read_text()
    example_vars = set(re.findall(r"^#?([A-Z_][A-Z0-9_]*)=", env_example, re.MULTILINE))
    text = (ROOT / "docker-compose.yml").read_text()
    required = {m.group(1) for m in INTERPOLATION.finditer(text) if m.group(2) == ":?"}
    assert required, "secrets are required interpolations"
    assert required <= example_vars, f".env.example misses {sorted(required - example_vars)}"
    for svc in compose["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            if key in SECRET_ENVS | {"RABBITMQ_DEFAULT_PASS", "MONGO_INITDB_ROOT_PASSWORD"}:
                assert "${" in str(value), f"{key} must come from .env"
    # The committed example holds placeholders only: no usable Fernet key, no real password.
    values = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", env_example, re.MULTILINE))
    for key in ("CREDENTIALS_KEY", "BROKER_SECRET", "OTC_API_KEY", "RABBITMQ_PASSWORD", "MONGO_PASSWORD"):
        assert values[key] == "change-me"


def test_compose_demo_profile_runs_emulators_with_flags_their_cli_accepts(
    compose: Doc, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    demo = {n for n, s in services.items() if "demo" in s.get("profiles", [])}
    assert demo == {"kube", "otc"}
    for name in demo:
        assert services[name]["build"]["target"] == "dev"
        assert services[name]["healthcheck"]["test"]
    kube_cmd = [_interpolate(a) for a in services["kube"]["command"]]
    otc_cmd = [_interpolate(a) for a in services["otc"]["command"]]
    assert kube_cmd[0] == "emulators.kube" and otc_cmd[0] == "emulators.otc"
    kube_main = importlib.import_module("emulators.kube.__main__")
    kube_args = kube_main.parse_args(kube_cmd[1:])
    assert kube_args.host == "0.0.0.0"
    # The Dockerfile's dev stage copies deploy/samples to /app/samples.
    assert [Path(p).name for p in kube_args.seed] == [SAMPLE.name, "tekton-sample.yaml"]
    assert all((SAMPLE.parent / Path(p).name).is_file() for p in kube_args.seed)
    # The demo cluster has Kabanero 0.9's Tekton: bundles the emulator knows, installed before the seeds.
    assert kube_args.crds == ["tekton-v0.11.3", "openshift-pipelines-operator"]
    assert set(kube_args.crds) <= set(importlib.import_module("emulators.kube.crd").BUNDLES)
    assert "COPY deploy/samples /app/samples" in (ROOT / "Dockerfile").read_text()
    monkeypatch.setenv("OTC_API_KEY", "k")
    monkeypatch.setenv("BROKER_SECRET", "s")
    otc_settings = importlib.import_module("emulators.otc.__main__").parse_args(otc_cmd[1:])
    assert otc_settings.host == "0.0.0.0"
    assert otc_settings.broker_url == "http://broker-api:8080"
    assert set(services["otc"]["environment"]) == {"OTC_API_KEY", "BROKER_SECRET"}
    # The services point at the emulators by default and wait for them only when the profile runs.
    watcher, writer = services["kabanero-watcher"], services["otc-writer"]
    assert _interpolate(watcher["environment"]["KUBE_API_URL"]) == "x-kube_api_url"
    assert "http://kube:8001" in watcher["environment"]["KUBE_API_URL"]
    assert "http://otc:8090" in writer["environment"]["OTC_API_URL"]
    assert watcher["depends_on"]["kube"] == {"condition": "service_healthy", "required": False}
    assert writer["depends_on"]["otc"] == {"condition": "service_healthy", "required": False}


def test_compose_tekton_profile_is_the_tekton_install_on_its_own(compose: Doc) -> None:
    """broker-api serving only the Tekton broker, a Tekton-only watcher, otc-writer, their emulators."""
    services = compose["services"]
    tekton = {n for n, s in services.items() if "tekton" in s.get("profiles", [])}
    assert tekton == {*TEKTON_SERVICES, "kube-tekton", "otc-tekton"}, "no github-linker, no Kabanero service"
    assert all(s.get("profiles") == ["tekton"] for n, s in services.items() if n in tekton)
    default = services["broker-api"]
    for name, module in TEKTON_SERVICES.items():
        svc = services[name]
        assert svc["command"] == [f"services.{module}"] and svc["build"]["target"] == "runtime"
        # The same image, hardening and healthcheck as the default install's services.
        for key in ("image", "read_only", "cap_drop", "security_opt", "healthcheck", "tmpfs", "init"):
            assert svc[key] == default[key], f"{name}: {key}"
        for dependency in ("rabbitmq", "mongo"):
            assert svc["depends_on"][dependency] == {"condition": "service_healthy"}
    infra = {"amqp_url": "amqp://u:p@rabbitmq:5672/", "mongodb_url": "mongodb://mongo:27017/kabanero_otc"}
    broker_env = services["tekton-broker-api"]["environment"]
    broker_settings = importlib.import_module("services.broker_api.settings").Settings(
        brokers=broker_env["BROKERS"],
        broker_id="b",
        broker_secret="s",
        credentials_key="A" * 43 + "=",
        **infra,
    )
    assert broker_settings.served == ("tekton-broker",)
    watcher_env = {k: _interpolate(str(v)) for k, v in services["tekton-watcher"]["environment"].items()}
    watcher_settings = importlib.import_module("services.kabanero_watcher.settings").Settings(
        watch_families=watcher_env["WATCH_FAMILIES"], lease_name=watcher_env["LEASE_NAME"], **infra
    )
    assert watcher_settings.watch_families == ("tekton",)
    watcher, writer = services["tekton-watcher"], services["tekton-otc-writer"]
    assert "tekton-pipelines,openshift-pipelines" in watcher["environment"]["TEKTON_INSTALL_NAMESPACES"]
    # Its own Lease: a Kabanero watcher of the same cluster must not take its leadership.
    assert watcher_settings.lease_name != services["kabanero-watcher"]["environment"].get(
        "LEASE_NAME", "kabanero-watcher"
    )
    # By default against the profile's own emulators, waited for only when the profile runs.
    assert "http://kube-tekton:8001" in watcher["environment"]["KUBE_API_URL"]
    assert "http://otc-tekton:8090" in writer["environment"]["OTC_API_URL"]
    assert watcher["depends_on"]["kube-tekton"] == {"condition": "service_healthy", "required": False}
    assert writer["depends_on"]["otc-tekton"] == {"condition": "service_healthy", "required": False}
    # The cluster: Kabanero 0.9's Tekton and OpenShift Pipelines operator, no Kabanero CRD.
    kube_args = importlib.import_module("emulators.kube.__main__").parse_args(
        [_interpolate(a) for a in services["kube-tekton"]["command"][1:]]
    )
    assert kube_args.tekton == "v0.11.3" and kube_args.crds == ["openshift-pipelines-operator"]
    assert kube_args.kabanero is False
    assert [Path(p).name for p in kube_args.seed] == [TEKTON_SAMPLE.name]
    otc_cmd = services["otc-tekton"]["command"]
    assert otc_cmd[otc_cmd.index("--broker-url") + 1] == "http://tekton-broker-api:8080"
    # `make compose-check` runs the profile on its own, with the Tekton scenario.
    check = (ROOT / "scripts" / "compose-check.sh").read_text()
    assert "PROFILE=tekton" in check and "CHECK_SCENARIO=tekton" in check
    assert all(name in check for name in tekton)


# --- demo sample ---------------------------------------------------------------------------------


def test_sample_is_a_09_instance_with_repositories_and_two_mediations() -> None:
    docs = {d["kind"]: d for d in _load_all(SAMPLE)}
    kabanero = docs["Kabanero"]
    assert kabanero["apiVersion"] == "kabanero.io/v1alpha2"
    assert kabanero["metadata"]["namespace"] == "kabanero"
    assert len(kabanero["spec"]["stacks"]["repositories"]) == 2
    assert kabanero["spec"]["stacks"]["pipelines"] and kabanero["spec"]["gitops"]["pipelines"]
    mediator = docs["EventMediator"]
    assert mediator["apiVersion"] == "events.kabanero.io/v1alpha1"
    mediations = {m["name"] for m in mediator["spec"]["mediations"]}
    assert len(mediations) == 2
    connections = docs["EventConnections"]["spec"]["connections"]
    sources = {(c["from"]["mediator"]["name"], c["from"]["mediator"]["mediation"]) for c in connections}
    assert sources == {(mediator["metadata"]["name"], m) for m in mediations}
    assert all(c["to"][0]["https"] for c in connections)


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kustomization() -> Doc:
    doc = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def manifests(kustomization: Doc) -> list[Doc]:
    return [d for res in kustomization["resources"] for d in _load_all(K8S / res)]


def _by_kind(manifests: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in manifests if d["kind"] == kind}


def _container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


def _config_env() -> dict[str, str]:
    lines = (K8S / "config.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_k8s_secret_is_referenced_never_embedded(kustomization: Doc, manifests: list[Doc]) -> None:
    assert "secret.example.yaml" not in kustomization["resources"]
    assert not [d for d in manifests if d["kind"] == "Secret"]
    example = _load_all(K8S / "secret.example.yaml")
    assert [d["kind"] for d in example] == ["Secret"]
    assert example[0]["metadata"]["name"] == SECRET_NAME
    assert set(example[0]["stringData"]) == SECRET_ENVS
    config_keys = set(_config_env())
    assert not config_keys & SECRET_ENVS, "secrets never go into the ConfigMap"
    for deployment in _by_kind(manifests, "Deployment").values():
        for env in _container(deployment)["env"]:
            if env["name"] in SECRET_ENVS:
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref == {"name": SECRET_NAME, "key": env["name"]}


def test_k8s_deployments_probes_resources_and_security_context(manifests: list[Doc]) -> None:
    deployments = _by_kind(manifests, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, module in SERVICES.items():
        deployment = deployments[name]
        assert deployment["spec"]["replicas"] == REPLICAS[name]
        pod = deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["serviceAccountName"] == name
        c = _container(deployment)
        assert c["image"] == "kabanero-otc"
        assert c["args"] == [f"services.{module}"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"/tmp"} <= {m["mountPath"] for m in c["volumeMounts"]}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        env = {e["name"]: e for e in c["env"]}
        assert env["HTTP_PORT"]["value"] == "8080"
        for res in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][res])


def test_k8s_env_names_are_settings_and_required_ones_are_set(manifests: list[Doc]) -> None:
    deployments = _by_kind(manifests, "Deployment")
    config = set(_config_env())
    read_by_someone: set[str] = set()
    for name, module in SERVICES.items():
        known, required = _settings_fields(module)
        c = _container(deployments[name])
        assert c["envFrom"] == [{"configMapRef": {"name": "kabanero-otc-config"}}]
        env = {e["name"] for e in c["env"]}
        assert env <= known, f"{name}: unknown settings {sorted(env - known)}"
        assert required <= env | config, f"{name}: required settings missing {sorted(required - env)}"
        read_by_someone |= known
    assert config <= read_by_someone, f"ConfigMap keys no service reads: {sorted(config - read_by_someone)}"


def test_k8s_watcher_rbac_is_read_only_on_crds_plus_its_lease(manifests: list[Doc]) -> None:
    cluster_roles = _by_kind(manifests, "ClusterRole")
    roles = _by_kind(manifests, "Role")
    # configmaps: the watcher reads the `gitops-map` ConfigMaps (Kabanero 0.9 GitOps repository).
    # namespaces: only `get` of kube-system, whose uid is the cluster identity (one cluster per name).
    watched = {"kabaneros", "stacks", "eventmediators", "eventconnections", "configmaps", "namespaces"}
    granted: set[str] = set()
    for role in cluster_roles.values():
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert set(rule["apiGroups"]) <= {"kabanero.io", "events.kabanero.io", ""}
            assert "secrets" not in rule["resources"]
            if "namespaces" in rule["resources"]:
                assert rule["resources"] == ["namespaces"] and rule["verbs"] == ["get"]
                assert rule["resourceNames"] == ["kube-system"]
            granted |= set(rule["resources"])
    assert granted == watched
    for role in roles.values():
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]
            assert set(rule["verbs"]) <= {"get", "create", "update"}
    # Only the watcher's ServiceAccount is bound, and only its pods mount an API token.
    bindings = [d for d in manifests if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}]
    assert bindings and all(
        [(s["kind"], s["name"]) for s in b["subjects"]] == [("ServiceAccount", "kabanero-watcher")]
        for b in bindings
    )
    deployments = _by_kind(manifests, "Deployment")
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is (name == "kabanero-watcher")
    watcher_env = {e["name"]: e for e in _container(deployments["kabanero-watcher"])["env"]}
    assert "KUBE_API_URL" not in watcher_env, "in-cluster config"
    assert watcher_env["LEASE_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    lease_names = {n for r in roles.values() for rule in r["rules"] for n in rule.get("resourceNames", [])}
    assert lease_names == {watcher_env["LEASE_NAME"]["value"]}
    # The base is the Kabanero install: its watcher runs what these grants cover, its broker-api the
    # Kabanero brokers (the Tekton install is k8s/overlays/tekton).
    config = _config_env()
    assert config["WATCH_FAMILIES"] == "kabanero"
    assert set(config["BROKERS"].split(",")) == {"kabanero-broker", "kabanero-events-broker"}


def test_k8s_broker_api_service_and_disruption_budget(manifests: list[Doc]) -> None:
    service = _by_kind(manifests, "Service")["broker-api"]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = _by_kind(manifests, "Deployment")["broker-api"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = _by_kind(manifests, "PodDisruptionBudget")["broker-api"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] == 1


def _render(path: Path) -> list[Doc]:
    out = subprocess.run(
        [kubectl_path(), "kustomize", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize(
    "path",
    [ROOT / "k8s", MULTI, TEKTON, TEKTON_MULTI],
    ids=["k8s", "multi-cluster", "tekton", "tekton-multi"],
)
def test_k8s_rendered_manifests_match_the_kubernetes_schemas(path: Path) -> None:
    """Strict: an unknown or misspelt field fails, not only a wrong type. CRDs are checked below."""
    import kubernetes_validate

    for doc in _render(path):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_k8s_kustomization_renders_into_one_namespace() -> None:
    docs = _render(ROOT / "k8s")
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for doc in docs:
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "kabanero-otc", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kabanero-otc"
    config_maps = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]
    assert len(config_maps) == 1 and config_maps[0].startswith("kabanero-otc-config-")
    for doc in docs:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            assert container["envFrom"] == [{"configMapRef": {"name": config_maps[0]}}]
            assert container["image"] == "kabanero-otc:0.1.0"


@pytest.fixture(scope="module")
def multi() -> list[Doc]:
    return _render(MULTI)


def _pod_env(deployment: Doc) -> dict[str, str]:
    env = _container(deployment)["env"]
    return {e["name"]: e.get("value", "<from>") for e in env}


def test_k8s_multi_cluster_has_one_of_each_service_and_a_watcher_per_cluster(multi: list[Doc]) -> None:
    deployments = _by_kind(multi, "Deployment")
    (config,) = _by_kind(multi, "ConfigMap").values()
    clusters = config["data"]["ALLOWED_CLUSTERS"].split(",")
    assert len(clusters) >= 2
    assert set(deployments) == {"broker-api", "otc-writer", "github-linker"} | {
        f"kabanero-watcher-{c}" for c in clusters
    }
    known, _ = _settings_fields("kabanero_watcher")
    secrets_used = set()
    for cluster in clusters:
        watcher = deployments[f"kabanero-watcher-{cluster}"]
        pod = watcher["spec"]["template"]["spec"]
        env = _pod_env(watcher)
        assert env["CLUSTER_NAME"] == cluster
        assert set(env) <= known and "KUBE_API_URL" not in env
        # The kubeconfig wins over the in-cluster config Kubernetes offers every pod.
        assert env["KUBERNETES_SERVICE_HOST"] == "" and pod["automountServiceAccountToken"] is False
        mounts = {m["name"]: m for m in _container(watcher)["volumeMounts"]}
        volume = next(v for v in pod["volumes"] if "secret" in v)
        assert env["KUBECONFIG"].startswith(mounts[volume["name"]]["mountPath"] + "/")
        assert mounts[volume["name"]]["readOnly"] is True
        secrets_used.add(volume["secret"]["secretName"])
        # Each watcher's own pods only: selectors must not overlap between clusters.
        assert watcher["spec"]["selector"]["matchLabels"]["kabanero-otc.io/cluster"] == cluster
        watcher_module = importlib.import_module("services.kabanero_watcher.settings")
        settings = watcher_module.Settings(
            **{k.lower(): v for k, v in env.items() if v != "<from>"},
            amqp_url="amqp://u:p@rabbitmq:5672/",
            mongodb_url="mongodb://mongo:27017/kabanero_otc",
        )
        assert not settings.kubernetes_service_host and settings.kubeconfig == env["KUBECONFIG"]
    assert secrets_used == {f"kabanero-watcher-{c}-kubeconfig" for c in clusters}
    for deployment in deployments.values():
        assert _container(deployment)["image"] == "kabanero-otc:0.1.0"
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # No API access is needed in the cluster kabanero-otc runs in.
    assert not [d for d in multi if d["apiVersion"].startswith("rbac.authorization.k8s.io/")]


def _egress_ports(policies: list[Doc], pod_labels: dict[str, str]) -> set[int]:
    ports: set[int] = set()
    for policy in policies:
        if policy["spec"]["podSelector"].get("matchLabels", {}).items() <= pod_labels.items():
            for rule in policy["spec"].get("egress", []):
                assert rule.get("to"), (
                    f"{policy['metadata']['name']}: an egress rule without `to` allows anywhere"
                )
                ports |= {p["port"] for p in rule["ports"]}
    return ports


def test_k8s_network_policies_deny_by_default_and_allow_only_the_dependencies(multi: list[Doc]) -> None:
    policies = list(_by_kind(multi, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    base = {53, 5671, 5672, 27017}  # DNS, RabbitMQ (TLS too), MongoDB
    expected = {
        "broker-api": base,
        "github-linker": base,
        "otc-writer": base | {443},  # OTC: Toolchain API and IAM
        "kabanero-watcher": base | {443, 6443},  # the watched clusters' API servers
    }
    for deployment in _by_kind(multi, "Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _egress_ports(policies, labels) == expected[labels["app.kubernetes.io/name"]]
    # OTC's HTTPS goes to public addresses only.
    (otc,) = [
        p
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels") == {"app.kubernetes.io/name": "otc-writer"}
    ]
    block = otc["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0" and {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(
        block["except"]
    )
    # Ingress: broker-api's port only from the ingress controller in front of it (OTC's side), and
    # the metrics port from Prometheus; nothing else reaches any pod.
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            sources = [
                peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for peer in rule["from"]
            ]
            assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
            selected = policy["spec"]["podSelector"]["matchLabels"]
            if selected == {"app.kubernetes.io/name": "broker-api"}:
                assert sources == ["ingress-nginx"]
            else:
                assert sources == ["monitoring"] and selected == {"app.kubernetes.io/part-of": "kabanero-otc"}


def test_k8s_service_monitor_scrapes_every_service(multi: list[Doc]) -> None:
    (monitor,) = [d for d in multi if d["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["kabanero-otc"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        s for s in _by_kind(multi, "Service").values() if wanted.items() <= s["metadata"]["labels"].items()
    ]
    assert endpoint["port"] in {p["name"] for s in scraped for p in s["spec"]["ports"]}
    names = set()
    for deployment in _by_kind(multi, "Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(s["spec"]["selector"].items() <= labels.items() for s in scraped), deployment["metadata"][
            "name"
        ]
        names.add(labels["app.kubernetes.io/name"])
    assert names == set(SERVICES)


# --- the Tekton install (k8s/overlays/tekton, tekton-multi-cluster) ----------------------------


@pytest.fixture(scope="module")
def tekton() -> list[Doc]:
    return _render(TEKTON)


def _tekton_reads(install_namespaces: tuple[str, ...]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(group, resource) the Tekton family reads: (cluster-wide or in the watched namespaces, in the
    install namespaces only), from the watcher's own resource list, every group a kind may be served in."""
    family = importlib.import_module("services.kabanero_watcher.tekton_family")
    watcher = importlib.import_module("services.kabanero_watcher.settings")
    settings = watcher.Settings(
        amqp_url="amqp://u:p@rabbitmq:5672/",
        mongodb_url="mongodb://mongo:27017/kabanero_otc",
        tekton_install_namespaces=",".join(install_namespaces),
    )
    cache = family.TektonCache("c", settings)
    pinned = set(cache.install.all())
    wide: set[tuple[str, str]] = set()
    install: set[tuple[str, str]] = set()
    for spec in cache.resources:
        assert spec.namespaces in (None, install_namespaces)
        (install if spec in pinned else wide).update((group, spec.plural) for group, _ in spec.candidates)
    return wide, install


def _rules(role: Doc) -> set[tuple[str, str]]:
    return {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}


def test_k8s_tekton_overlay_is_the_tekton_install_with_least_privilege(tekton: list[Doc]) -> None:
    """Only what the Tekton family reads, read-only; install-namespace kinds only in those namespaces."""
    deployments = _by_kind(tekton, "Deployment")
    assert set(deployments) == {"broker-api", "otc-writer", "kabanero-watcher"}, "no github-linker"
    assert "github-linker" not in _by_kind(tekton, "ServiceAccount")
    (config,) = _by_kind(tekton, "ConfigMap").values()
    data = config["data"]
    infra = {"amqp_url": "amqp://u:p@rabbitmq:5672/", "mongodb_url": "mongodb://mongo:27017/kabanero_otc"}
    broker = importlib.import_module("services.broker_api.settings").Settings(
        brokers=data["BROKERS"], broker_id="b", broker_secret="s", credentials_key="A" * 43 + "=", **infra
    )
    assert broker.served == ("tekton-broker",)
    assert data["WATCH_FAMILIES"] == "tekton"
    install_namespaces = tuple(data["TEKTON_INSTALL_NAMESPACES"].split(","))
    wide, install = _tekton_reads(install_namespaces)

    # Everything of the install in tekton-otc, apart from the install namespaces' Roles.
    (namespace,) = _by_kind(tekton, "Namespace")
    assert namespace == "tekton-otc"
    rbac_kinds = {"Role", "RoleBinding"}
    for doc in tekton:
        ns = doc["metadata"].get("namespace")
        if doc["kind"] in rbac_kinds and ns != "tekton-otc":
            assert ns in install_namespaces, doc["metadata"]
        elif doc["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert ns == "tekton-otc", doc["metadata"]

    cluster_roles = [d for d in tekton if d["kind"] == "ClusterRole"]
    roles = [d for d in tekton if d["kind"] == "Role"]
    for role in [*cluster_roles, *roles]:
        for rule in role["rules"]:
            assert not {"kabanero.io", "events.kabanero.io"} & set(rule["apiGroups"]), "no Kabanero grant"
            assert "secrets" not in rule["resources"] and "*" not in rule["verbs"] + rule["resources"]
            if rule["apiGroups"] != ["coordination.k8s.io"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    # Cluster-wide: exactly the watched kinds, and `get` of kube-system (the cluster identity).
    (cluster_role,) = cluster_roles
    assert _rules(cluster_role) == wide | {("", "namespaces")}
    for rule in cluster_role["rules"]:
        if "namespaces" in rule["resources"]:
            assert rule["resources"] == ["namespaces"] and rule["verbs"] == ["get"]
            assert rule["resourceNames"] == ["kube-system"]
        else:
            assert set(rule["verbs"]) == {"get", "list", "watch"}
    assert not {("", "configmaps"), ("apps", "deployments")} & _rules(cluster_role), "install namespaces only"
    # One read-only Role per install namespace, with exactly what is read there.
    readers = [r for r in roles if r["metadata"]["namespace"] != "tekton-otc"]
    assert sorted(r["metadata"]["namespace"] for r in readers) == sorted(install_namespaces)
    for role in readers:
        assert _rules(role) == install
    # The Lease: in tekton-otc, only the watcher's own (not the Kabanero watcher's kabanero-watcher).
    (lease,) = [r for r in roles if r["metadata"]["namespace"] == "tekton-otc"]
    assert _rules(lease) == {("coordination.k8s.io", "leases")}
    assert {v for rule in lease["rules"] for v in rule["verbs"]} <= {"get", "create", "update"}
    watcher_env = {e["name"]: e for e in _container(deployments["kabanero-watcher"])["env"]}
    lease_names = {n for rule in lease["rules"] for n in rule.get("resourceNames", [])}
    assert lease_names == {watcher_env["LEASE_NAME"]["value"]} == {"tekton-watcher"}
    assert watcher_env["LEASE_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Every binding: the watcher's ServiceAccount, to a role of this install, in the role's namespace.
    bindings = [d for d in tekton if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}]
    assert len(bindings) == len(cluster_roles) + len(roles)
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kabanero-watcher", "namespace": "tekton-otc"}
        ]
        ref = binding["roleRef"]
        (role,) = [
            r
            for r in [*cluster_roles, *roles]
            if r["kind"] == ref["kind"]
            and r["metadata"]["name"] == ref["name"]
            and r["metadata"].get("namespace") == binding["metadata"].get("namespace")
        ]
    # The Deployments: settings they read, the Secret by reference, a token only for the watcher.
    for name, deployment in deployments.items():
        module = SERVICES[name]
        known, required = _settings_fields(module)
        c = _container(deployment)
        assert c["args"] == [f"services.{module}"] and c["image"] == "kabanero-otc:0.1.0"
        assert c["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
        env = {e["name"]: e for e in c["env"]}
        assert set(env) <= known and required <= set(env) | set(data), name
        for key in set(env) & SECRET_ENVS:
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": key}
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is (name == "kabanero-watcher")
        assert pod["serviceAccountName"] == name
    assert set(data) <= set().union(*(_settings_fields(m)[0] for m in SERVICES.values()))


def test_k8s_tekton_install_can_run_beside_the_kabanero_install() -> None:
    """Two installs in one cluster: no cluster-scoped name in common, no namespace in common."""
    kabanero, tekton = _render(ROOT / "k8s"), _render(TEKTON)
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}

    def names(docs: list[Doc]) -> set[tuple[str, str]]:
        return {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in cluster_scoped}

    def namespaces(docs: list[Doc]) -> set[str]:
        return {d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"]}

    assert not names(kabanero) & names(tekton)
    assert not namespaces(kabanero) & namespaces(tekton)


def test_k8s_tekton_multi_cluster_has_a_tekton_watcher_per_cluster(tekton: list[Doc]) -> None:
    docs = _render(TEKTON_MULTI)
    deployments = _by_kind(docs, "Deployment")
    (config,) = _by_kind(docs, "ConfigMap").values()
    data = config["data"]
    assert data["BROKERS"] == "tekton-broker" and data["WATCH_FAMILIES"] == "tekton"
    clusters = data["ALLOWED_CLUSTERS"].split(",")
    assert len(clusters) >= 2 and len(set(clusters)) == len(clusters)
    assert set(deployments) == {"broker-api", "otc-writer"} | {f"kabanero-watcher-{c}" for c in clusters}
    known, _ = _settings_fields("kabanero_watcher")
    for cluster in clusters:
        watcher = deployments[f"kabanero-watcher-{cluster}"]
        env = _pod_env(watcher)
        assert set(env) <= known and env["CLUSTER_NAME"] == cluster
        assert env["KUBERNETES_SERVICE_HOST"] == "" and env["KUBECONFIG"]
        # Not the Lease of a Kabanero watcher of the same cluster (k8s/overlays/multi-cluster).
        assert (env["LEASE_NAMESPACE"], env["LEASE_NAME"]) == ("tekton-otc", "tekton-watcher")
        assert watcher["spec"]["selector"]["matchLabels"]["kabanero-otc.io/cluster"] == cluster
        volume = next(v for v in watcher["spec"]["template"]["spec"]["volumes"] if "secret" in v)
        assert volume["secret"]["secretName"] == f"kabanero-watcher-{cluster}-kubeconfig"
        assert _container(watcher)["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    for deployment in deployments.values():
        assert deployment["metadata"]["namespace"] == "tekton-otc"
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # No API access in the cluster the install runs in; the watched clusters grant what ../tekton does.
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io/")]
    assert _by_kind(docs, "ServiceAccount").keys() == _by_kind(tekton, "ServiceAccount").keys()


def test_deployment_doc_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    for module in SERVICES.values():
        known, _ = _settings_fields(module)
        missing = sorted(name for name in known if f"`{name}`" not in doc)
        assert not missing, f"docs/deployment.md §2 misses {module} settings {missing}"
