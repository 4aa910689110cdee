"""The OpenEMR integration's state for ``/readyz``, ``meoring doctor`` and ``/metrics``.

Nothing here talks to OpenEMR: the state is what the hub recorded in its store (a refused
refresh token, a disabled client) and in its state directory (registrations), so the
check is cheap and says exactly what a person must do.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from hub.config import HubSettings
from hub.errors import HubError
from hub.openemr.registration import ClientRegistry, state_dir
from hub.openemr.schema import TokenState, openemr_tokens
from hub.openemr.writes import TARGET
from hub.store import Store
from hub.store.schema import Status, outbox

__all__ = ["OpenEmrStateCollector", "jwks_document", "openemr_readiness", "waiting_writes"]


def waiting_writes(store: Store) -> int:
    """OpenEMR writes not yet carried out (pending or retrying, held ones included)."""
    with store.engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(outbox)
            .where(outbox.c.target == TARGET, outbox.c.status.in_((Status.PENDING, Status.RETRYING)))
        ).scalar_one())


def _states(store: Store) -> dict[str, tuple[str, str | None]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(openemr_tokens.c.client, openemr_tokens.c.state, openemr_tokens.c.reason))
        return {str(r.client): (str(r.state), r.reason) for r in rows}


def openemr_readiness(settings: HubSettings, store: Store | None) -> str | None:
    """None when the integration can work, else one line saying what to do.

    Not configured (no ``openemr.base_url``) is fine. Reported, in this order: no
    registration; re-login required (with the recorded reason and the number of held
    writes); a disabled client; no user login yet.
    """
    if not settings.openemr.base_url or store is None:
        return None
    try:
        clients = ClientRegistry(state_dir(settings), settings.openemr).all()
    except HubError as exc:
        return f"openemr: {exc}"
    missing = [k for k in ("backend", "user") if k not in clients]
    if missing:
        return f"openemr: no {' and '.join(missing)} client registered (run `meoring openemr register`)"
    try:
        states = _states(store)
        held = waiting_writes(store)
    except SQLAlchemyError:
        return None  # the store check reports an unreachable or unmigrated store
    waiting = f"; {held} OpenEMR write(s) held" if held else ""
    user_state, user_reason = states.get("user", (None, None))
    if user_state == TokenState.RELOGIN_REQUIRED:
        return f"openemr: RE-LOGIN REQUIRED — {user_reason or 'no reason recorded'}{waiting} " \
               "(run `meoring openemr login`)"
    for kind in ("backend", "user"):
        state, _reason = states.get(kind, (None, None))
        if state == TokenState.CLIENT_DISABLED:
            return (f"openemr: the {kind} client {clients[kind].client_id} is disabled or unknown to OpenEMR"
                    f"{waiting} (enable it under Administration → System → API Clients)")
    if user_state is None:
        return f"openemr: no user login yet{waiting} (run `meoring openemr login`)"
    return None


class OpenEmrStateCollector(Collector):
    """Gauges read from the store at scrape time: re-login required, disabled clients, waiting writes."""

    def __init__(self, settings: HubSettings, store: Store) -> None:
        self._settings = settings
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self._settings.openemr.base_url:
            return
        try:
            states = _states(self._store)
            held = waiting_writes(self._store)
        except SQLAlchemyError:
            return
        relogin = 1 if states.get("user", ("", None))[0] == TokenState.RELOGIN_REQUIRED else 0
        yield GaugeMetricFamily("meoring_openemr_relogin_required",
                                "1 while OpenEMR refuses the stored refresh token (run meoring openemr login)",
                                value=relogin)
        disabled = GaugeMetricFamily("meoring_openemr_client_disabled",
                                     "1 while OpenEMR answers invalid_client for this client", labels=["client"])
        for kind in ("backend", "user"):
            disabled.add_metric([kind], 1 if states.get(kind, ("", None))[0] == TokenState.CLIENT_DISABLED else 0)
        yield disabled
        yield GaugeMetricFamily("meoring_openemr_writes_waiting",
                                "OpenEMR writes pending or retrying (held while a person must act)", value=held)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def jwks_document(settings: HubSettings) -> dict[str, object]:
    """The hub's public JWKS, to serve at ``openemr.jwks_uri`` when that is set."""
    from hub.openemr.keys import KeyStore

    return KeyStore(state_dir(settings) / "keys").jwks()
