"""``meoring openemr register|login|sync|status``.

Wire it into the ``meoring`` parser with :func:`add_openemr_commands`. Each handler takes
``(args, settings)`` and returns the exit status; failures raise :class:`hub.errors.HubError`
subclasses, which ``meoring`` prints as one line. Nothing printed is secret: client ids and
key ids yes, client secrets and tokens never.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from hub.config import HubSettings
from hub.errors import HubError

if TYPE_CHECKING:
    from hub.openemr.integration import OpenEmr
    from hub.store import Store

__all__ = ["add_openemr_commands", "cmd_login", "cmd_register", "cmd_status", "cmd_sync"]


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _open(settings: HubSettings) -> tuple[OpenEmr, Store]:
    from hub.openemr.integration import OpenEmr
    from hub.runtime import open_store

    store = open_store(settings)
    try:
        return OpenEmr(settings, store), store
    except BaseException:
        store.close()
        raise


def cmd_register(args: argparse.Namespace, settings: HubSettings) -> int:
    """Register the backend and user clients (or one of them) and print the admin step."""
    from hub.openemr.registration import enable_instructions

    openemr, store = _open(settings)
    try:
        existing = openemr.registry.all()
        kinds = tuple(args.only) if args.only else ("backend", "user")
        if args.rotate_key:
            if settings.openemr.jwks_uri:
                openemr.keys.rotate()
                _print(f"new signing key {openemr.keys.active().kid}; the JWKS at {settings.openemr.jwks_uri} "
                       "publishes it next to the previous one — no new registration needed")
                return 0
            kinds = ("backend",)
        already = [k for k in kinds if k in existing]
        if already and not (args.force or args.rotate_key):
            raise HubError(f"already registered: {', '.join(already)} client(s) (see `meoring openemr status`); "
                           "use --force to register new ones")
        registered = openemr.register(kinds=kinds, rotate_key=args.rotate_key)
        for client in registered:
            key = f", key {client.kid}" if client.kid else ""
            _print(f"registered {client.kind} client {client.client_id}{key}")
        _print(f"stored in {openemr.registry.path} (keep it private; back it up with the hub's data)")
        for line in enable_instructions(registered, openemr.endpoints):
            _print(line)
        return 0
    finally:
        openemr.close()
        store.close()


def cmd_login(args: argparse.Namespace, settings: HubSettings) -> int:
    """Authorization code + PKCE: print the URL, catch the redirect on loopback, store the tokens."""
    openemr, store = _open(settings)
    try:
        def show(url: str) -> None:
            _print("Open this URL in a browser and sign in to OpenEMR as the user the hub acts for:")
            _print(url)
            _print(f"(waiting up to {int(args.timeout)} s for the redirect to "
                   f"{settings.openemr.redirect_host}:{settings.openemr.redirect_port})")

        result = openemr.login(on_url=show, timeout=args.timeout)
        row = result.row
        until = row.access_expires_at.isoformat(timespec="seconds") + "Z" if row.access_expires_at else "?"
        _print(f"logged in: refresh token stored (generation {row.generation}); access token valid until {until}")
        if result.missing:
            _print(f"warning: OpenEMR did not grant {' '.join(result.missing)} (unticked at consent?)")
        return 0
    finally:
        openemr.close()
        store.close()


def cmd_sync(args: argparse.Namespace, settings: HubSettings) -> int:
    """Mirror OpenEMR's Patients into the FHIR server."""
    from hub.runtime import fhir_client

    openemr, store = _open(settings)
    fhir = fhir_client(settings)
    try:
        mirror = openemr.mirror(fhir)
        if args.bulk:
            result = mirror.bulk(since=args.since)
        elif args.full:
            result = mirror.full()
        else:
            result = mirror.incremental()
        _print(f"{result.mode} sync: mirrored {result.patients} patient(s) into {settings.fhir.base_url} in "
               f"{result.seconds:.1f} s; cursor {result.cursor or 'unset'}")
        return 0
    finally:
        fhir.close()
        openemr.close()
        store.close()


def cmd_status(args: argparse.Namespace, settings: HubSettings) -> int:
    """Registration, login state, waiting writes and sync cursor; ``--check`` also asks OpenEMR."""
    from hub.openemr.endpoints import check_discovery, fetch_discovery
    from hub.openemr.health import openemr_readiness, waiting_writes
    from hub.openemr.sync import CURSOR

    openemr, store = _open(settings)
    try:
        if args.jwks:
            _print(json.dumps(openemr.keys.jwks(), indent=2))
            return 0
        _print(f"openemr: {openemr.endpoints.base_url} (site {openemr.endpoints.site})")
        clients = openemr.registry.all()
        for kind in ("backend", "user"):
            client = clients.get(kind)
            if client is None:
                _print(f"{kind} client: not registered")
                continue
            key = f", key {client.kid}" if client.kid else ""
            row = openemr.token_store.get(kind)
            state = row.state if row else ("not logged in" if kind == "user" else "no token yet")
            _print(f"{kind} client: {client.client_id}{key}; state: {state}"
                   + (f" — {row.reason}" if row and row.reason else ""))
            if kind == "user" and row and row.access_expires_at:
                _print(f"  refresh generation {row.generation}; access token valid until "
                       f"{row.access_expires_at.isoformat(timespec='seconds')}Z")
        _print(f"OpenEMR writes waiting: {waiting_writes(store)}")
        cursor = store.cursors.get(CURSOR)
        since = json.loads(cursor).get("since") if cursor and cursor.startswith("{") else cursor
        _print(f"patient sync cursor: {since or 'none (next sync is a full one)'}")
        problems: list[str] = []
        ready = openemr_readiness(settings, store)
        if ready:
            problems.append(ready)
        if args.check:
            discovery = fetch_discovery(openemr.http, openemr.endpoints)
            problems.extend(check_discovery(discovery, openemr.endpoints,
                                            settings.openemr.backend_scopes.split()))
            if openemr.system is not None:
                try:
                    openemr.system.token()
                    _print("backend token: obtained")
                except HubError as exc:
                    problems.append(f"backend token: {exc}")
        for problem in problems:
            _print(problem)
        return 1 if problems else 0
    finally:
        openemr.close()
        store.close()


def add_openemr_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``openemr`` with its actions to ``meoring``'s subparsers; returns the ``openemr`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "openemr", help="OpenEMR: register the hub's clients, log in, sync patients, show the state",
        description="OpenEMR, the source of truth: register the hub's OAuth2 clients, log in, mirror patients.",
    )
    actions = parser.add_subparsers(dest="openemr_action", required=True, metavar="ACTION")

    p = actions.add_parser("register", help="register the hub's two OAuth2 clients (dynamic registration)",
                           description="Register the backend-services and user-delegated clients with OpenEMR "
                                       "and print the admin step that enables them.")
    p.add_argument("--only", action="append", choices=["backend", "user"], help="register just this client")
    p.add_argument("--force", action="store_true", help="register again although clients are registered")
    p.add_argument("--rotate-key", action="store_true",
                   help="make a new signing key (with an inline JWKS this registers a new backend client)")
    p.set_defaults(func=cmd_register)

    p = actions.add_parser("login", help="sign in as the OpenEMR user the hub acts for (authorization code + PKCE)",
                           description="Print a URL to open in a browser; catch OpenEMR's redirect on loopback and "
                                       "store the refresh token.")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the redirect (default 300)")
    p.set_defaults(func=cmd_login)

    p = actions.add_parser("sync", help="mirror OpenEMR's patients into the FHIR server",
                           description="Mirror Patients from OpenEMR into HAPI: incremental by default.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="every patient, by paged search")
    mode.add_argument("--bulk", action="store_true", help="every patient, by system-level bulk $export")
    p.add_argument("--since", help="with --bulk: only patients changed since this FHIR instant")
    p.set_defaults(func=cmd_sync)

    p = actions.add_parser("status", help="registration, login state, waiting writes, sync cursor",
                           description="Show the integration's state; exit 1 if a person must act.")
    p.add_argument("--check", action="store_true", help="also read OpenEMR's discovery and get a backend token")
    p.add_argument("--jwks", action="store_true", help="print the hub's public JWKS and stop")
    p.set_defaults(func=cmd_status)
    return parser
