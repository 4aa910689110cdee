"""The HTTP app in-process: health, readiness that names problems, Prometheus metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from hub.app import create_app
from hub.config import HubSettings
from hub.store import IncomingMessage, Store


def settings_for(tmp_path: Path, fhir: str = "http://127.0.0.1:9/fhir") -> HubSettings:
    return HubSettings(store={"url": f"sqlite:///{tmp_path / 'a.db'}"}, fhir={"base_url": fhir})


def test_healthz_and_readyz_names_the_unreachable_fhir_server(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    store = Store.open(settings.store.url)
    client = TestClient(create_app(settings, store))
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert set(ready.json()["problems"]) == {"fhir"}
    assert "unreachable" in ready.json()["problems"]["fhir"]
    store.close()


def test_readyz_ok_against_real_hapi(tmp_path: Path, hapi_url: str) -> None:
    settings = settings_for(tmp_path, hapi_url)
    store = Store.open(settings.store.url)
    ready = TestClient(create_app(settings, store)).get("/readyz")
    assert ready.status_code == 200, ready.text
    store.close()


def test_metrics_expose_message_states(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    store = Store.open(settings.store.url)
    store.inbox.receive_many([IncomingMessage("fhir", "t", b"{}", message_id=str(i)) for i in range(3)])
    body = TestClient(create_app(settings, store)).get("/metrics").text
    assert 'meoring_messages{state="received"} 3.0' in body
    assert 'meoring_messages{state="dead"} 0.0' in body
    assert "# TYPE meoring_delivery_latency_seconds histogram" in body
    assert "meoring_oldest_pending_age_seconds" in body
    store.close()


def test_unknown_path_is_an_operation_outcome(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    store = Store.open(settings.store.url)
    response = TestClient(create_app(settings, store)).get("/nope")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    store.close()
