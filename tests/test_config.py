"""Configuration: YAML + environment, errors that name the key and never echo the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import load_settings
from hub.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hub.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults_run_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEORING_CONFIG", raising=False)
    settings = load_settings()
    assert settings.store.url.startswith("sqlite:///")
    assert settings.fhir.base_url == "http://127.0.0.1:8080/fhir"
    assert settings.store.sqlite_synchronous == "FULL"


def test_yaml_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "fhir:\n  base_url: http://hapi:8080/fhir/\npipeline:\n  max_attempts: 3\n")
    monkeypatch.setenv("MEORING_PIPELINE__MAX_ATTEMPTS", "5")
    settings = load_settings(path)
    assert settings.fhir.base_url == "http://hapi:8080/fhir"  # trailing slash trimmed
    assert settings.pipeline.max_attempts == 5  # env wins over the file


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("fhir:\n  base_url: ftp://x\n", "fhir.base_url"),
        ("pipeline:\n  max_attempts: zero\n", "pipeline.max_attempts"),
        ("store:\n  url: postgresql://u:SECRETPW@h/db\n", "store.url"),
        ("fhir:\n  timeout: 3\n", "fhir.timeout"),
        ("mllp:\n  port: 70000\n", "mllp.port"),
    ],
)
def test_invalid_config_names_the_key_not_the_value(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert caught.value.key == key
    assert key in str(caught.value)
    assert "SECRETPW" not in str(caught.value)


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        load_settings(write(tmp_path, "fhir:\n\tbase_url: x\n"))


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml")
