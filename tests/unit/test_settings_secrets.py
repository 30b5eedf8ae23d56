"""Settings from files (Kubernetes Secret volumes, compose secrets): ``SECRETS_DIR``, one file each."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from services.broker_api.settings import Settings as BrokerSettings
from services.otc_writer.settings import Settings as WriterSettings
from shared.settings import SettingsError, load_settings


def _key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def test_secrets_come_from_files_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "BROKER_SECRET").write_text("secret-from-a-file-0123456789")
    (tmp_path / "CREDENTIALS_KEY").write_text(_key())
    (tmp_path / "OTC_API_KEY").write_text("api-key-from-a-file")
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("BROKER_ID", "kabanero-otc")
    for name in ("BROKER_SECRET", "CREDENTIALS_KEY", "OTC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    broker = load_settings(BrokerSettings, service="broker-api")
    assert broker.broker_secret.get_secret_value() == "secret-from-a-file-0123456789"
    assert (
        load_settings(WriterSettings, service="otc-writer").otc_api_key.get_secret_value()
        == "api-key-from-a-file"
    )
    monkeypatch.setenv("OTC_API_KEY", "from-the-environment")
    assert (
        load_settings(WriterSettings, service="otc-writer").otc_api_key.get_secret_value()
        == "from-the-environment"
    )


def test_without_the_file_the_error_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("OTC_API_KEY", raising=False)
    with pytest.raises(SettingsError, match="OTC_API_KEY is required"):
        load_settings(WriterSettings, service="otc-writer")
