"""Test stack: real MariaDB, Redis and HAPI FHIR, started once per session on free ports.

Tests that use any of these servers are marked ``integration`` automatically; the rest
run without servers (``pytest -m "not integration"``). Data is isolated per test: a new
SQLite file or MariaDB database each time, and unique ids/identifiers in HAPI.
Set ``MEORING_TEST_HAPI_URL`` to reuse an already running HAPI instead of starting one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.store import Store
from tests.stack import HapiServer, MariaDbServer, RedisServer

SERVER_FIXTURES = {"mariadb", "redis_server", "hapi", "hapi_url", "mariadb_url"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def mariadb(stack_root: Path) -> Iterator[MariaDbServer]:
    server = MariaDbServer(stack_root / "mariadb").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(stack_root: Path) -> Iterator[RedisServer]:
    server = RedisServer(stack_root / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hapi(stack_root: Path) -> Iterator[HapiServer | None]:
    """The session's HAPI server; None when an external one is given by env."""
    if os.environ.get("MEORING_TEST_HAPI_URL"):
        yield None
        return
    server = HapiServer(stack_root / "hapi").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hapi_url(hapi: HapiServer | None) -> str:
    return os.environ.get("MEORING_TEST_HAPI_URL") or (hapi.base_url if hapi else "")


@pytest.fixture
def mariadb_url(mariadb: MariaDbServer) -> str:
    return mariadb.create_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hub.db'}"


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same store tests run against both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    server: MariaDbServer = request.getfixturevalue("mariadb")
    return server.create_database()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()
