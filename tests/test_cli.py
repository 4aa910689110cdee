"""The CLI: one readable line and a non-zero exit on failure, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.cli.main import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEORING_STORE__URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("MEORING_FHIR__BASE_URL", "http://127.0.0.1:9/fhir")  # nothing listens on port 9
    monkeypatch.delenv("MEORING_CONFIG", raising=False)
    return tmp_path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli.main", *args], capture_output=True, text=True,
                          check=False, timeout=120)


def test_bad_config_is_one_line_exit_2(env: Path) -> None:
    bad = env / "bad.yaml"
    bad.write_text("pipeline:\n  max_attempts: nonsense\n")
    result = run("--config", str(bad), "status")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "pipeline.max_attempts" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_for_ingest(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--channel", "fhir", str(env / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert "No such file" in err and "missing.json" in err


def test_ingest_status_and_duplicates(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feed = env / "feed.ndjson"
    lines = [json.dumps({"resourceType": "Patient", "id": f"cli-{i}"}) for i in range(3)]
    feed.write_text("\n".join(lines) + "\n")
    assert main(["ingest", "--channel", "fhir", str(feed)]) == 0
    assert "stored 3 message(s), 0 duplicate(s)" in capsys.readouterr().out
    assert main(["ingest", "--channel", "fhir", str(feed)]) == 0
    assert "stored 0 message(s), 3 duplicate(s)" in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["messages"]["received"] == 3
    assert status["oldest_pending"]["inbox_id"] == 1


def test_translate_dry_run_and_its_failure(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = env / "good.json"
    good.write_text(json.dumps({"resourceType": "Patient", "id": "dry-1", "gender": "female"}))
    assert main(["translate", "--channel", "fhir", str(good)]) == 0
    bundle = json.loads(capsys.readouterr().out)
    assert bundle["type"] == "transaction"
    assert bundle["entry"][0]["request"] == {"method": "PUT", "url": "Patient/dry-1"}
    bad = env / "bad.json"
    bad.write_text(json.dumps({"resourceType": "Patient", "id": "dry-2", "birthDate": "19x"}))
    assert main(["translate", "--channel", "fhir", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "Patient.birthDate" in err and "19x" not in err


def test_doctor_names_each_unreachable_endpoint(env: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MEORING_REDIS__URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("MEORING_ORTHANC__URL", "http://127.0.0.1:9")
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["doctor"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["fhir", "redis", "orthanc"]


def test_doctor_reports_unmigrated_store(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "store: schema is not at the latest migration" in out


def test_replay_list_and_range_usage(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--list"]) == 0
    assert "0 open dead letter(s)" in capsys.readouterr().out
    assert main(["replay", "--since", "2026-01-01T00:00"]) == 2
    assert "--since and --until go together" in capsys.readouterr().err


def test_usage_error_exit_2() -> None:
    result = run("replay", "--since", "yesterday-ish", "--until", "now")
    assert result.returncode == 2
    assert "not an ISO 8601 time" in result.stderr


def test_doctor_all_green_against_real_servers(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                               mariadb_url: str, redis_server, hapi_url: str) -> None:
    monkeypatch.setenv("MEORING_STORE__URL", mariadb_url)
    monkeypatch.setenv("MEORING_FHIR__BASE_URL", hapi_url)
    monkeypatch.setenv("MEORING_REDIS__URL", redis_server.url)
    monkeypatch.delenv("MEORING_CONFIG", raising=False)
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["doctor"]) == 0
    assert capsys.readouterr().out.strip() == "ok: 3 checks passed (store, fhir, redis)"
    from tests.stack import free_port

    monkeypatch.setenv("MEORING_REDIS__URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    assert main(["doctor"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("redis: redis://127.0.0.1:") and "unreachable" in lines[0]
