"""The CLI's settings: the services' defaults, the run file replacing the environment, flags winning,
and a bad value a usage error naming the variable (never echoing it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kotc_cli import config as configuration
from kotc_cli.errors import CliError
from kotc_cli.main import main
from kotc_cli.settings import SERVICE_NAMES, SERVICE_SETTINGS, CliSettings, default_of
from services.otc_writer.settings import Settings as WriterSettings
from shared.settings import CommonSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting of the developer's shell (or the test suite's), no secrets directory, and not the
    run file of a ``make run`` going on in this checkout."""
    monkeypatch.setattr(configuration, "SOURCE_TREE", tmp_path / "checkout")
    for name in (*configuration.KEYS, *configuration.SERVICE_ENV.values(), "KOTC_RUN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "no-secrets"))


def test_each_service_has_its_own_default_port_and_the_cli_its_health_url() -> None:
    ports = {name: default_of(cls, "http_port") for name, cls in SERVICE_SETTINGS.items()}
    assert ports == {"broker-api": 8080, "kabanero-watcher": 8081, "otc-writer": 8082, "github-linker": 8083}
    services = CliSettings().service_urls()
    assert services == {name: [f"http://127.0.0.1:{port}"] for name, port in ports.items()}


def test_defaults_are_the_services_own() -> None:
    s = CliSettings()
    assert s.amqp_url.get_secret_value() == default_of(CommonSettings, "amqp_url").get_secret_value()
    assert s.mongodb_url.get_secret_value() == default_of(CommonSettings, "mongodb_url").get_secret_value()
    assert s.otc_api_url == default_of(WriterSettings, "otc_api_url")
    assert (s.cluster_name, s.lease_namespace, s.lease_name) == ("default", "kabanero", "kabanero-watcher")
    assert s.otc_api_key is None and s.kube_api_url is None


def test_the_environment_is_read_by_the_services_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://u:p@rabbit:5672/vh%2Fx")
    monkeypatch.setenv("KOTC_OTC_WRITER_URL", "http://w1:8082/, http://w2:8082")
    monkeypatch.setenv("OTC_API_KEY", "")  # empty is unset
    config = configuration.load(cwd=tmp_path)
    assert config.source == "environment"
    assert config.vhost == "vh/x" and config.amqp_credentials == ("u", "p")
    assert config.services["otc-writer"] == ["http://w1:8082", "http://w2:8082"]
    assert config.get("OTC_API_KEY") is None
    assert config.safe("AMQP_URL") == "amqp://u:***@rabbit:5672/vh%2Fx"


def test_flags_win_and_an_unknown_setting_or_service_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLUSTER_NAME", "from-env")
    config = configuration.load(
        overrides={"cluster_name": "from-flag", "ALLOWED_CLUSTERS": "b,from-flag"},
        service_urls={"broker-api": ["http://b:1"]},
        cwd=tmp_path,
    )
    assert config.clusters == ["from-flag", "b"]
    assert config.services["broker-api"] == ["http://b:1"]
    with pytest.raises(CliError, match="--set NOPE: unknown setting"):
        configuration.load(overrides={"NOPE": "1"}, cwd=tmp_path)
    with pytest.raises(CliError, match="--service nope: one of broker-api"):
        configuration.load(service_urls={"nope": ["http://x"]}, cwd=tmp_path)


def test_a_bad_value_names_the_variable_not_the_value(tmp_path: Path) -> None:
    with pytest.raises(CliError) as caught:
        configuration.load(overrides={"KOTC_BROKER_API_URL": "ftp://user:hunter2@x"}, cwd=tmp_path)
    assert "KOTC_BROKER_API_URL" in str(caught.value) and "hunter2" not in str(caught.value)
    with pytest.raises(CliError, match="CLUSTER_NAME"):
        configuration.load(overrides={"CLUSTER_NAME": ""}, cwd=tmp_path)


def _run_file(folder: Path, pid: int) -> Path:
    path = folder / ".run" / "stack.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "pid": pid,
                "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/stack-vhost",
                "OTC_API_KEY": "dev-key",
                "BROKER_ID": "",
                "services": {"otc-writer": ["http://127.0.0.1:40001"]},
            }
        )
    )
    return path


def test_a_live_run_file_replaces_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _run_file(tmp_path, os.getpid())
    (tmp_path / "below").mkdir()
    monkeypatch.setenv("AMQP_URL", "amqp://guest:guest@elsewhere:5672/env-vhost")
    monkeypatch.setenv("ALLOWED_CLUSTERS", "from-env")
    monkeypatch.setenv("KOTC_BROKER_API_URL", "http://from-env:1")
    config = configuration.load(cwd=tmp_path / "below", overrides={"BROKER_ID": "flag"})
    assert config.source == f"run file {path}"
    assert config.vhost == "stack-vhost" and config.get("OTC_API_KEY") == "dev-key"
    assert config.clusters == ["default"]  # ALLOWED_CLUSTERS of the environment is not read
    assert config.services["otc-writer"] == ["http://127.0.0.1:40001"]
    assert config.services["broker-api"] == ["http://127.0.0.1:8080"]  # the default, not the env's
    assert config.get("BROKER_ID") == "flag"
    assert configuration.load(cwd=tmp_path, use_run_file=False).vhost == "env-vhost"


def test_a_run_file_whose_stack_is_gone_is_ignored_with_a_note(tmp_path: Path) -> None:
    path = _run_file(tmp_path, 2**22 + 12345)  # above pid_max's default: no such process
    config = configuration.load(cwd=tmp_path)
    assert config.source == "environment" and config.vhost == "/"
    assert config.notes == [f"ignored {path}: the make run that wrote it (pid {2**22 + 12345}) is gone"]


def test_a_named_run_file_must_exist_and_be_a_json_object(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="not found"):
        configuration.load(run_file=str(tmp_path / "absent.json"), cwd=tmp_path)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(CliError, match="not a JSON object"):
        configuration.load(run_file=str(tmp_path / "list.json"), cwd=tmp_path)


def test_every_service_is_known() -> None:
    assert set(SERVICE_NAMES) == set(configuration.SERVICE_ENV)
    assert configuration.SERVICE_ENV["otc-writer"] == "KOTC_OTC_WRITER_URL"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["status", "--set", "NOPE=1"], "--set NOPE: unknown setting"),
        (["status", "--set", "novalue"], "--set 'novalue': expected NAME=VALUE"),
        (["plan", "--service", "web=http://x"], "--service web: one of broker-api"),
        (["doctor", "--set", "KOTC_OTC_WRITER_URL=file:///etc"], "invalid settings: KOTC_OTC_WRITER_URL"),
    ],
)
def test_a_bad_flag_exits_2_before_anything_is_contacted(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--no-run-file", *argv])
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(f"kabanero-otc: {said}")
