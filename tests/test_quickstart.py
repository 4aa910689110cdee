"""The README's main job: `meoring quickstart` replays the bundled samples into a real HAPI."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from hub.cli.main import main


def test_quickstart_puts_the_samples_into_hapi_and_says_where_to_look(
    tmp_path: Path, hapi_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEORING_STORE__URL", f"sqlite:///{tmp_path / 'qs.db'}")
    monkeypatch.setenv("MEORING_FHIR__BASE_URL", hapi_url)
    monkeypatch.delenv("MEORING_CONFIG", raising=False)
    assert main(["quickstart"]) == 0
    out = capsys.readouterr().out
    assert f"{hapi_url}/Patient?_sort=-_lastUpdated" in out
    assert "dead 0" in out
    # The ADT^A01 sample's patient (MRN NW1000234 at NORTHWIND) is in HAPI, once.
    found = httpx.get(f"{hapi_url}/Patient", params={"identifier": "NW1000234", "_summary": "count"},
                      timeout=30).json()
    assert found["total"] == 1
    # Running it again is a replay of the same messages: acknowledged as duplicates, nothing new.
    assert main(["quickstart"]) == 0
    again = capsys.readouterr().out
    assert "inbox: 0 new message(s)" in again
    found = httpx.get(f"{hapi_url}/Patient", params={"identifier": "NW1000234", "_summary": "count"},
                      timeout=30).json()
    assert found["total"] == 1


def test_quickstart_without_a_fhir_server_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEORING_STORE__URL", f"sqlite:///{tmp_path / 'qs.db'}")
    monkeypatch.setenv("MEORING_FHIR__BASE_URL", "http://127.0.0.1:9/fhir")
    assert main(["quickstart"]) == 1
    err = capsys.readouterr().err
    assert "run-hapi.sh" in err and err.count("\n") == 1
