"""Pytest fixtures for the OpenEMR tests: import them into a test module by name.

``emulator``   a started :class:`OpenEmrEmulator` (its own SQLite file, a free port)
``settings``   HubSettings pointing the hub at the emulator (1 s timeout, a free redirect port)
``hub_store``  the hub's store (SQLite), migrated
``openemr``    the hub's :class:`hub.openemr.OpenEmr` (nothing registered yet)
``ready``      the same, with both clients registered, enabled by the "admin" and logged in
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.config import HubSettings, OpenEmrSettings, StoreSettings
from hub.openemr import OpenEmr
from hub.store import Store
from tests.openemr_emulator import OpenEmrEmulator
from tests.stack import free_port


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[OpenEmrEmulator]:
    server = OpenEmrEmulator(tmp_path / "openemr", hang_s=2.0).start()
    yield server
    server.stop()


def hub_settings(tmp_path: Path, emulator: OpenEmrEmulator, **openemr: object) -> HubSettings:
    values: dict[str, object] = {
        "base_url": emulator.base_url,
        "redirect_port": free_port(),
        "timeout_s": 1.0,
        "connect_timeout_s": 1.0,
        "export_poll_interval_s": 0.05,
    }
    values.update(openemr)
    return HubSettings(
        data_dir=tmp_path / "hub",
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'hub.db'}", sqlite_synchronous="NORMAL"),
        openemr=OpenEmrSettings(**values),  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(tmp_path: Path, emulator: OpenEmrEmulator) -> HubSettings:
    return hub_settings(tmp_path, emulator)


@pytest.fixture
def hub_store(settings: HubSettings) -> Iterator[Store]:
    store = Store.open(settings.store.url, sqlite_synchronous="NORMAL")
    yield store
    store.close()


@pytest.fixture
def openemr(settings: HubSettings, hub_store: Store) -> Iterator[OpenEmr]:
    integration = OpenEmr(settings, hub_store, sleep=lambda _s: None)
    yield integration
    integration.close()


def login(openemr: OpenEmr, emulator: OpenEmrEmulator, **browser: object) -> object:
    """Run ``OpenEmr.login`` with the emulator playing the user's browser."""

    def open_browser(url: str) -> None:
        threading.Thread(target=emulator.browser_login, args=(url,), kwargs=browser, daemon=True).start()

    return openemr.login(on_url=open_browser, timeout=10)


@pytest.fixture
def ready(openemr: OpenEmr, emulator: OpenEmrEmulator) -> OpenEmr:
    openemr.register()
    emulator.enable_all_clients()
    login(openemr, emulator)
    return openemr
