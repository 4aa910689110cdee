# ruff: noqa: F811 - pytest fixtures are imported by name and then requested as parameters
"""OpenEMR OAuth2 against the emulator: registration, every grant, expiry, rotation, re-login.

The emulator follows ``shared/reference/openemr.md``; section numbers below point there.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import threading
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hub.config import HubSettings
from hub.openemr import (
    AccessDenied,
    ClientDisabled,
    MissingScope,
    OpenEmr,
    OpenEmrStateCollector,
    ReloginRequired,
    TokenRefused,
    openemr_readiness,
)
from hub.openemr.cli import add_openemr_commands
from hub.openemr.endpoints import check_discovery, fetch_discovery
from hub.openemr.schema import TokenState
from hub.openemr.tokens import (
    ASSERTION_TYPE,
    SystemTokens,
    TokenStore,
    authorization_request,
    client_assertion,
    exchange_code,
)
from hub.store import Store
from hub.store.records import utcnow
from tests.openemr_emulator import OpenEmrEmulator
from tests.openemr_emulator.fixtures import emulator, hub_settings, hub_store, login, openemr, ready, settings  # noqa: F401


class Clock:
    """A settable UTC clock for the hub's side."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meoring")
    add_openemr_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- discovery, registration


def test_discovery_reads_both_documents_with_their_quirks(openemr: OpenEmr, emulator: OpenEmrEmulator) -> None:
    raw = httpx.get(f"{emulator.fhir_base}/.well-known/smart-configuration").json()
    assert isinstance(raw["scopes_supported"][0], list), "the SMART document nests scopes_supported (§2.2)"
    discovery = fetch_discovery(openemr.http, openemr.endpoints)
    assert "system/Patient.rs" in discovery.scopes_supported
    assert "client_credentials" in discovery.grant_types_supported  # only the SMART document lists it
    assert check_discovery(discovery, openemr.endpoints, openemr.settings.backend_scopes.split()) == []
    emulator.system_scopes = False  # rest_system_scopes_api off (§1)
    problems = check_discovery(fetch_discovery(openemr.http, openemr.endpoints), openemr.endpoints,
                               ["system/Patient.rs"])
    assert problems and "rest_system_scopes_api" in problems[0]


def test_register_stores_both_clients_privately_and_prints_the_enable_step(
    settings: HubSettings, emulator: OpenEmrEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(["openemr", "register"])
    assert args.func(args, settings) == 0
    out = capsys.readouterr().out
    stored = json.loads((settings.data_dir / "openemr" / "clients.json").read_text())
    assert set(stored) == {"backend", "user"}
    assert stat.S_IMODE(os.stat(settings.data_dir / "openemr" / "clients.json").st_mode) == 0o600
    backend, user = emulator.client(stored["backend"]["client_id"]), emulator.client(stored["user"]["client_id"])
    # Both start disabled: confidential clients with system/ or user/ scopes (§2.4).
    assert backend["is_enabled"] == 0 and user["is_enabled"] == 0
    assert json.loads(backend["jwks"])["keys"][0]["kid"] == stored["backend"]["kid"]  # inline JWKS with kid
    assert "Administration → System → API Clients" in out and stored["user"]["client_id"] in out
    assert stored["user"]["client_secret"] not in out and stored["backend"]["registration_access_token"] not in out
    # A second register refuses without --force (one readable line via HubError).
    again = parse(["openemr", "register"])
    with pytest.raises(Exception, match="already registered"):
        again.func(again, settings)


def test_rotating_the_key_registers_a_new_backend_client_with_the_new_kid(
    openemr: OpenEmr, emulator: OpenEmrEmulator
) -> None:
    first = openemr.register()[0]
    emulator.enable_all_clients()
    openemr.system.token()  # type: ignore[union-attr]
    second = openemr.register(kinds=("backend",), rotate_key=True)[0]
    assert second.kid != first.kid and second.client_id != first.client_id
    jwks = json.loads(emulator.client(second.client_id)["jwks"])
    assert [k["kid"] for k in jwks["keys"]] == [second.kid]
    assert [k["kid"] for k in openemr.keys.jwks()["keys"]] == [second.kid, first.kid]  # previous kept published
    with pytest.raises(ClientDisabled):  # a new registration is disabled again
        openemr.system.token()  # type: ignore[union-attr]
    emulator.enable_client(second.client_id)
    assert openemr.system.token()  # type: ignore[union-attr]


# --------------------------------------------------------------------------- client_credentials


def test_disabled_client_is_a_loud_state_until_enabled(openemr: OpenEmr, emulator: OpenEmrEmulator,
                                                        settings: HubSettings, hub_store: Store) -> None:
    openemr.register()
    with pytest.raises(ClientDisabled, match="enable it under Administration"):
        openemr.system.token()  # type: ignore[union-attr]
    problem = openemr_readiness(settings, hub_store)
    assert problem is not None and "backend client" in problem and "disabled" in problem
    registry = CollectorRegistry()
    registry.register(OpenEmrStateCollector(settings, hub_store))
    assert 'meoring_openemr_client_disabled{client="backend"} 1.0' in generate_latest(registry).decode()
    emulator.enable_all_clients()
    assert openemr.system.token()  # type: ignore[union-attr]
    assert hub_store.engine and openemr.token_store.get("backend").state == TokenState.ACTIVE  # type: ignore[union-attr]


def test_client_credentials_assertion_is_rs384_single_use_and_the_token_lives_300_s(
    openemr: OpenEmr, emulator: OpenEmrEmulator
) -> None:
    openemr.register()
    emulator.enable_all_clients()
    backend = openemr.registry.get("backend")
    assertion = client_assertion(backend, openemr.keys, emulator.token_url)
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}
    first = httpx.post(emulator.token_url, data=form)
    assert first.status_code == 200 and first.json()["expires_in"] == 300  # PT300S, not the docs' 60 s (§8)
    replay = httpx.post(emulator.token_url, data=form)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_client"  # jti is single-use (§2.6)
    secret = httpx.post(emulator.token_url, data={"grant_type": "client_credentials", "client_id": backend.client_id,
                                                  "client_secret": "x"})
    assert secret.json()["error"] == "invalid_client"  # client_credentials takes a JWT only (§2.6)


def test_system_token_is_cached_and_renewed_before_its_300_s_end(openemr: OpenEmr, emulator: OpenEmrEmulator) -> None:
    openemr.register()
    emulator.enable_all_clients()
    now = [1_000_000.0]
    tokens = SystemTokens(openemr.http, openemr.endpoints, openemr.registry.get("backend"), openemr.keys,
                          renew_margin_s=60, clock=lambda: now[0])
    first = tokens.token()
    now[0] += 200
    assert tokens.token() == first and tokens.fetches == 1
    now[0] += 45  # 245 s: within the 60 s margin of the 300 s lifetime
    assert tokens.token() != first and tokens.fetches == 2


def test_token_expiring_in_the_middle_of_a_batch_is_renewed_once_and_the_batch_completes(
    openemr: OpenEmr, emulator: OpenEmrEmulator
) -> None:
    openemr.register()
    emulator.enable_all_clients()
    uuids = emulator.seed_patients(10)
    read = []
    for index, patient_uuid in enumerate(uuids):
        if index == 5:
            emulator.expire_tokens()  # the server ends the token early; the hub still thinks it is valid
        read.append(openemr.client.read("Patient", patient_uuid))
    assert all(r is not None for r in read)
    assert openemr.system.fetches == 2  # type: ignore[union-attr]
    assert emulator.requests("GET", "/fhir/Patient/") == 11  # one 401, answered by a fresh token


def test_missing_scope_is_reported_as_the_scope_after_one_renewal(tmp_path: Path, emulator: OpenEmrEmulator) -> None:
    settings = hub_settings(tmp_path, emulator, backend_scopes="system/Patient.rs")
    store = Store.open(settings.store.url)
    with OpenEmr(settings, store, sleep=lambda _s: None) as openemr:
        openemr.register(kinds=("backend",))
        emulator.enable_all_clients()
        with pytest.raises(MissingScope, match=r"system/Observation\.rs") as caught:
            openemr.client.search("Observation", [("patient", "x")])
        assert caught.value.status == 401
        assert emulator.requests("GET", "/fhir/Observation") == 2  # the second with a fresh token
    store.close()


# --------------------------------------------------------------------------- authorization code + PKCE


def test_login_with_code_and_pkce_stores_a_refresh_token(ready: OpenEmr, emulator: OpenEmrEmulator) -> None:
    row = ready.token_store.get("user")
    assert row is not None and row.refresh_token and row.generation == 1 and row.state == TokenState.ACTIVE
    assert "api:oemr" not in (row.scope or "")  # OpenEMR strips api:* from the granted list (§2.6)
    assert ready.user.token() == row.access_token  # type: ignore[union-attr]


def test_a_code_with_the_wrong_verifier_or_used_twice_is_invalid_grant(
    openemr: OpenEmr, emulator: OpenEmrEmulator
) -> None:
    openemr.register()
    emulator.enable_all_clients()
    client = openemr.registry.get("user")
    request = authorization_request(openemr.endpoints, client, client.redirect_uris[0])
    final = emulator.browser_login(request.url, follow=False)
    code = httpx.URL(final).params["code"]
    wrong = type(request)(request.url, request.state, "x" * 64, request.redirect_uri)
    with pytest.raises(TokenRefused, match="invalid_grant"):
        exchange_code(openemr.http, openemr.endpoints, client, wrong, code)
    with pytest.raises(TokenRefused, match="invalid_grant"):  # the code was spent by the failed attempt
        exchange_code(openemr.http, openemr.endpoints, client, request, code)


def test_login_refused_at_consent_is_one_clear_error(openemr: OpenEmr, emulator: OpenEmrEmulator) -> None:
    openemr.register()
    emulator.enable_all_clients()
    with pytest.raises(TokenRefused, match="access_denied"):
        login(openemr, emulator, deny=True)
    with pytest.raises(TokenRefused, match="offline_access"):
        login(openemr, emulator, untick=["offline_access"])


def test_login_command_prints_the_url_and_stores_tokens(
    settings: HubSettings, emulator: OpenEmrEmulator, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register = parse(["openemr", "register"])
    register.func(register, settings)
    emulator.enable_all_clients()
    capsys.readouterr()
    import hub.openemr.integration as integration

    real_login = integration.OpenEmr.login

    def browser_login(self: OpenEmr, *, on_url, timeout):  # type: ignore[no-untyped-def]
        def show(url: str) -> None:
            on_url(url)
            threading.Thread(target=emulator.browser_login, args=(url,), daemon=True).start()

        return real_login(self, on_url=show, timeout=timeout)

    monkeypatch.setattr(integration.OpenEmr, "login", browser_login)
    args = parse(["openemr", "login", "--timeout", "10"])
    assert args.func(args, settings) == 0
    out = capsys.readouterr().out
    assert "/oauth2/default/authorize?" in out and "code_challenge_method=S256" in out
    assert "logged in: refresh token stored (generation 1)" in out


# --------------------------------------------------------------------------- refresh rotation


def test_refresh_rotates_and_the_old_refresh_token_is_dead(ready: OpenEmr, emulator: OpenEmrEmulator) -> None:
    before = ready.token_store.get("user")
    assert before is not None
    ready.user.refresh()  # type: ignore[union-attr]
    after = ready.token_store.get("user")
    assert after is not None and after.generation == 2 and after.refresh_token != before.refresh_token
    revoked = {r["token"]: r["revoked"] for r in emulator.refresh_tokens()}
    assert revoked[before.refresh_token] == 1 and revoked[after.refresh_token] == 0  # type: ignore[index]
    # The old access token was revoked with it (§10): a request with it gets 401, the hub renews.
    stale = httpx.get(f"{emulator.api_base}/patient/x", headers={"Authorization": f"Bearer {before.access_token}"})
    assert stale.status_code == 401


def test_user_token_expiry_in_a_batch_rotates_once(tmp_path: Path, emulator: OpenEmrEmulator,
                                                   settings: HubSettings, hub_store: Store) -> None:
    clock = Clock()
    with OpenEmr(settings, hub_store, user_clock=clock, sleep=lambda _s: None) as openemr:
        openemr.register()
        emulator.enable_all_clients()
        login(openemr, emulator)
        pid, patient_uuid = openemr.client.create_patient(_patient("Batch"))
        for index in range(6):
            if index == 3:
                clock.advance(3600)  # the hub sees its access token at the end of its hour
                emulator.advance(3600)
            assert openemr.client.patient_pid(patient_uuid) == pid
        row = openemr.token_store.get("user")
        assert row is not None and row.generation == 2 and openemr.user.rotations == 1  # type: ignore[union-attr]


def test_two_processes_needing_a_refresh_at_once_spend_the_refresh_token_once(
    settings: HubSettings, hub_store: Store, emulator: OpenEmrEmulator
) -> None:
    clock = Clock()
    with OpenEmr(settings, hub_store) as setup:
        setup.register()
        emulator.enable_all_clients()
        login(setup, emulator)
    clock.advance(3600)
    a = OpenEmr(settings, hub_store, user_clock=clock)
    b = OpenEmr(settings, hub_store, user_clock=clock)
    posts_before = emulator.requests("POST", "/oauth2/default/token")
    results: list[str] = []
    threads = [threading.Thread(target=lambda o=o: results.append(o.user.token())) for o in (a, b)]  # type: ignore[misc]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 2 and results[0] == results[1]
    assert emulator.requests("POST", "/oauth2/default/token") - posts_before == 1
    row = a.token_store.get("user")
    assert row is not None and row.generation == 2 and row.state == TokenState.ACTIVE
    a.close()
    b.close()


class SimulatedCrash(BaseException):
    """The process dies: nothing after this point runs (not an Exception, nothing catches it)."""


def test_crash_between_receiving_and_storing_a_refresh_token_is_safe_and_loud(
    settings: HubSettings, hub_store: Store, emulator: OpenEmrEmulator
) -> None:
    """OpenEMR revokes the old refresh token when it answers; the new one dies with the process.

    The hub cannot recover that token (nobody can), so it must (1) never use the new access
    token, (2) notice on the next refresh, (3) enter the persistent re-login state naming the
    interrupted rotation, (4) hold queued writes without spending their attempts, and (5)
    carry them out once a person logged in again.
    """
    clock = Clock()
    first = OpenEmr(settings, hub_store, user_clock=clock, sleep=lambda _s: None)
    first.register()
    emulator.enable_all_clients()
    login(first, emulator)
    stored = first.token_store.get("user")
    assert stored is not None

    def crash() -> None:
        raise SimulatedCrash

    first.user.after_refresh_response = crash  # type: ignore[union-attr]
    with pytest.raises(SimulatedCrash):
        first.user.refresh()  # type: ignore[union-attr]
    first.close()  # the process is gone
    after_crash = first.token_store.get("user")
    assert after_crash is not None and after_crash.refresh_token == stored.refresh_token  # nothing half-stored
    assert after_crash.rotation_token is not None  # the interrupted rotation left its mark
    unspent = [r for r in emulator.refresh_tokens() if not r["revoked"]]
    assert len(unspent) == 1 and unspent[0]["token"] != stored.refresh_token  # OpenEMR's new one, lost

    # A restarted hub, after the dead process's claim expired, queues a write and works.
    clock.advance(120)
    store = Store(hub_store.engine, clock=clock)
    second = OpenEmr(settings, store, user_clock=clock, sleep=lambda _s: None)
    outbox_id = second.writer.update_patient("unknown-yet", _patient("Held"))
    from hub.config import PipelineSettings
    from hub.pipeline.worker import PipelineWorker

    worker = PipelineWorker(store, translators={}, deliverers={"openemr": second.deliverer},
                            settings=PipelineSettings(max_attempts=2, backoff_base_s=1), clock=clock)
    for _ in range(4):  # more rounds than max_attempts: a held write must not run out of attempts
        worker.run_once()
        clock.advance(10)
    row = second.token_store.get("user")
    assert row is not None and row.state == TokenState.RELOGIN_REQUIRED
    assert "interrupted before its new refresh token was stored" in (row.reason or "")
    problem = openemr_readiness(settings, store)
    assert problem is not None and problem.startswith("openemr: RE-LOGIN REQUIRED") and "1 OpenEMR write(s) held" \
        in problem
    entry = _outbox(store, outbox_id)
    assert entry["status"] == "retrying" and entry["attempts"] == 0, "held, not spending attempts"
    token_posts = emulator.requests("POST", "/oauth2/default/token")
    with pytest.raises(ReloginRequired, match="meoring openemr login"):
        second.user.token()  # type: ignore[union-attr]
    assert emulator.requests("POST", "/oauth2/default/token") == token_posts  # loud, and quiet on the wire
    registry = CollectorRegistry()
    registry.register(OpenEmrStateCollector(settings, store))
    assert "meoring_openemr_relogin_required 1.0" in generate_latest(registry).decode()

    # A person logs in again; the held write goes through (here: refused by OpenEMR, 404 for an
    # unknown uuid — the point is that it was carried out, once).
    login(second, emulator)
    assert openemr_readiness(settings, store) is None
    worker.run_once()
    entry = _outbox(store, outbox_id)
    assert entry["status"] == "dead" and "404" in entry["last_error"]
    assert emulator.requests("PUT", "/fhir/Patient/unknown-yet") == 2  # the 401 before the crash state, and now
    second.close()


def test_revoked_user_is_relogin_required_and_it_survives_a_restart(
    ready: OpenEmr, emulator: OpenEmrEmulator, settings: HubSettings, hub_store: Store
) -> None:
    emulator.revoke_user("admin")  # logout / admin revoke of the trusted user (§2.8, §7.5)
    with pytest.raises(ReloginRequired):
        ready.client.patient_pid("x")
    with OpenEmr(settings, hub_store) as restarted:
        with pytest.raises(ReloginRequired, match="revoked"):
            restarted.user.token()  # type: ignore[union-attr]
        assert "RE-LOGIN REQUIRED" in (openemr_readiness(settings, hub_store) or "")
        login(restarted, emulator)
        assert restarted.user.token()  # type: ignore[union-attr]


def test_user_token_without_api_oemr_is_denied_with_403(tmp_path: Path, emulator: OpenEmrEmulator) -> None:
    settings = hub_settings(tmp_path, emulator, user_scopes="openid offline_access user/patient.rs")
    store = Store.open(settings.store.url)
    with OpenEmr(settings, store, sleep=lambda _s: None) as openemr:
        openemr.register()
        emulator.enable_all_clients()
        login(openemr, emulator)
        with pytest.raises(AccessDenied, match="403"):
            openemr.client.patient_pid("x")
    store.close()


def test_token_rotation_is_a_compare_and_swap_on_both_store_backends(store: Store) -> None:
    """Migration 0002 on SQLite and MariaDB, and the claim/finish protocol the rotation relies on."""
    tokens = TokenStore(store.engine)
    row = tokens.store_login("user", "client-1", {"access_token": "a1", "refresh_token": "r1", "expires_in": 3600})
    assert row.generation == 1 and row.state == TokenState.ACTIVE
    claim = tokens.begin_rotation("user", 1, timedelta(seconds=60))
    assert claim is not None and claim.interrupted_since is None
    assert tokens.begin_rotation("user", 1, timedelta(seconds=60)) is None  # someone is rotating
    assert tokens.begin_rotation("user", 0, timedelta(seconds=60)) is None  # an old generation
    assert tokens.finish_rotation("user", 1, {"access_token": "a2", "expires_in": 3600}, "r2")
    assert not tokens.finish_rotation("user", 1, {"access_token": "a3", "expires_in": 3600}, "r3")
    row = tokens.get("user")  # type: ignore[assignment]
    assert row is not None and (row.generation, row.refresh_token, row.rotation_token) == (2, "r2", None)
    stale = tokens.begin_rotation("user", 2, timedelta(seconds=0))
    assert stale is not None
    taken_over = tokens.begin_rotation("user", 2, timedelta(seconds=-1))  # the first claim is older than the lease
    assert taken_over is not None and taken_over.interrupted_since is not None


# --------------------------------------------------------------------------- helpers


def _patient(family: str, mrn: str | None = None) -> dict[str, object]:
    patient: dict[str, object] = {"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}],
                                  "gender": "female", "birthDate": "1970-03-04"}
    if mrn:
        patient["identifier"] = [{"system": "urn:meoring:mrn", "value": mrn}]
    return patient


def _outbox(store: Store, outbox_id: int) -> dict[str, object]:
    from sqlalchemy import select

    from hub.store.schema import outbox

    with store.engine.connect() as conn:
        return dict(conn.execute(select(outbox).where(outbox.c.id == outbox_id)).mappings().one())
