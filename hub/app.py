"""The hub's HTTP app: liveness, readiness and Prometheus metrics (CDS Hooks mounts here later).

``/healthz`` answers as long as the process serves requests; ``/readyz`` says whether the
hub can do its job now (store reachable and migrated, FHIR server answering) and names
each problem; ``/metrics`` is Prometheus text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub import __version__
from hub.checks import Check, configured_checks
from hub.config import HubSettings
from hub.metrics import PipelineMetrics, StoreStateCollector
from hub.store import Store

ReadinessCheck = Check


@dataclass
class AppState:
    settings: HubSettings
    store: Store
    registry: CollectorRegistry
    metrics: PipelineMetrics
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)


def operation_outcome(status: int, code: str, diagnostics: str) -> JSONResponse:
    """A FHIR OperationOutcome response: how the hub reports HTTP errors."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return JSONResponse(body, status_code=status, media_type="application/fhir+json")


def create_app(settings: HubSettings, store: Store, *, registry: CollectorRegistry | None = None,
               metrics: PipelineMetrics | None = None,
               extra_checks: dict[str, ReadinessCheck] | None = None) -> FastAPI:
    registry = registry or CollectorRegistry()
    metrics = metrics or PipelineMetrics(registry)
    registry.register(StoreStateCollector(store))
    if settings.openemr.base_url:
        from hub.openemr.health import OpenEmrStateCollector

        registry.register(OpenEmrStateCollector(settings, store))
    state = AppState(settings=settings, store=store, registry=registry, metrics=metrics)
    state.checks.update(configured_checks(settings, store))
    state.checks.update(extra_checks or {})

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(title="Meoring Hub", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.hub = state

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not-found" if exc.status_code == 404 else "processing"
        return operation_outcome(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return operation_outcome(400, "invalid", f"{where}: {first.get('msg')}")

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> JSONResponse:
        return operation_outcome(500, "exception", f"internal error ({type(exc).__name__})")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        problems = {name: problem for name, check in state.checks.items() if (problem := check()) is not None}
        if problems:
            return JSONResponse({"status": "not-ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode("utf-8"), media_type=CONTENT_TYPE_LATEST)

    return app
