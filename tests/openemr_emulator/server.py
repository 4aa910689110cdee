"""An HTTP server that behaves like OpenEMR 8.2 for everything the hub uses.

Every behaviour follows ``shared/reference/openemr.md`` (the code's behaviour, not the
OpenAPI file's; §8 lists where they differ) and names its section. It is a test fixture,
never product code: a stdlib ``ThreadingHTTPServer`` on a free loopback port, state in a
real SQLite file, and helpers to act as the OpenEMR administrator (enable a client), as the
user's browser (log in, consent), and as a misbehaving server (answer 500, hang, expire
tokens early, move the clock).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import html
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from tests.openemr_emulator import fhir as F
from tests.openemr_emulator.scopes import grants, is_known_scope, server_scopes
from tests.openemr_emulator.storage import Storage

Clock = Callable[[], float]

ACCESS_TTL = 3600  # GRANT_TYPE_ACCESS_TOKEN_TTL = PT1H (§2.6)
SYSTEM_TTL = 300  # GRANT_TYPE_ACCESS_CODE_TTL = PT300S, used for client_credentials (§2.6, §8)
REFRESH_TTL = 90 * 86400  # P3M (§2.6)
CODE_TTL = 60  # auth code PT1M (§2.5)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SYSTEM_USER_UUID = "90cde167-0000-4000-8000-0000005ee7e3"  # the oe-system user (§2.6)

#: Resources the emulator serves from its ``resources`` table (plus Patient and documents).
READABLE = {"Encounter", "Observation", "Condition", "AllergyIntolerance", "MedicationRequest", "ServiceRequest",
            "DiagnosticReport", "DocumentReference", "Practitioner", "Procedure", "Immunization", "Organization"}
#: ACL admin/super needed by user tokens (§3.1, §7.9); Encounter only for instance reads.
ADMIN_ONLY = {"DocumentReference", "DiagnosticReport", "Coverage", "Device", "Goal", "Provenance", "Specimen"}
#: ACL admin/users (§3.1): a clinician lacks it.
ADMIN_USERS = {"Practitioner", "Binary", "Group"}


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def arg(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None

    def form(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body.decode("utf-8"), keep_blank_values=True)

    def form_dict(self) -> dict[str, str]:
        return dict(self.form())

    def cookie(self, name: str) -> str | None:
        for part in self.header("cookie").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: Any, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(value).encode("utf-8"), {"Content-Type": content_type, **(headers or {})})

    @classmethod
    def empty(cls, status: int) -> Response:
        return cls(status, b"", {})

    @classmethod
    def html(cls, status: int, text: str, headers: dict[str, str] | None = None) -> Response:
        return cls(status, text.encode("utf-8"), {"Content-Type": "text/html; charset=utf-8", **(headers or {})})

    @classmethod
    def redirect(cls, status: int, location: str, headers: dict[str, str] | None = None) -> Response:
        return cls(status, b"", {"Location": location, **(headers or {})})


def oauth_error(status: int, error: str, description: str, hint: str | None = None) -> Response:
    """League OAuthServerException JSON: error, error_description, message, hint? (§2.3)."""
    body = {"error": error, "error_description": description, "message": description}
    if hint:
        body["hint"] = hint
    return Response.json(status, body)


def resource_error(status: int, message: str, code: int = 0) -> Response:
    """Resource-side errors: ``{"error":"An error occurred","message":…,"code":0}`` served as
    text/html (§2.8, §10)."""
    return Response.json(status, {"error": "An error occurred", "message": message, "code": code},
                         content_type="text/html; charset=UTF-8")


DENIED = "The resource owner or authorization server denied the request."


@dataclass
class Fault:
    """A misbehaviour on cue: answer ``status`` or hang ``hang`` seconds (then drop the connection),
    before handling the request or, with ``after``, after having applied it."""

    method: str
    pattern: re.Pattern[str]
    status: int = 500
    hang: float | None = None
    times: int = 1
    after: bool = False


@dataclass
class Caller:
    """Who a bearer token belongs to."""

    client_id: str
    user_id: str
    role: str  # users | system
    scopes: list[str]
    acl: str  # admin | clinician | system


# --------------------------------------------------------------------------- the emulator


class OpenEmrEmulator:
    """OpenEMR 8.2 on loopback. ``base_url`` plays the ``site_addr_oath`` global (§1)."""

    def __init__(self, root: Path, *, site: str = "default", system_scopes: bool = True,
                 manual_approval: bool = False, hang_s: float = 3.0, clock: Clock = time.time) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.db = Storage(root / "openemr.sqlite")
        self.site = site
        self.system_scopes = system_scopes  # rest_system_scopes_api (§1)
        self.manual_approval = manual_approval  # oauth_app_manual_approval (§1, §2.4)
        self.default_hang = hang_s
        self.export_pending_polls = 0
        self.export_retry_after = "0"
        # The site key signs access and id tokens (RS256, §2.6).
        self.site_key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
        self._clock = clock  # the server's clock (injectable); advance() moves it further
        self._offset = 0.0
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self.log: list[tuple[str, str, int]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.add_user("admin", "pass", acl="admin")
        self.add_user("clinician", "pass", acl="clinician")

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> OpenEmrEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(self.command, parts.path, parse_qsl(parts.query, keep_blank_values=True),
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                response = emulator.handle(request)
                if response is None:
                    self.close_connection = True
                    return
                try:
                    self.send_response(response.status)
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(response.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(response.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout on cue)

            do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _handle

            def log_message(self, format: str, *args: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openemr-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.db.close()

    def __enter__(self) -> OpenEmrEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth_base(self) -> str:
        return f"{self.base_url}/oauth2/{self.site}"

    @property
    def token_url(self) -> str:
        return f"{self.auth_base}/token"

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/apis/{self.site}/fhir"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/apis/{self.site}/api"

    # -- test helpers: clock, faults, admin, users -------------------------------------
    def now(self) -> float:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the server's clock (tokens, codes and assertions age with it)."""
        self._offset += seconds

    def fail(self, method: str, path_regex: str, *, status: int = 500, hang: float | None = None,
             times: int = 1, after: bool = False) -> None:
        """Misbehave for the next ``times`` requests matching ``method`` and ``path_regex``."""
        with self._faults_lock:
            self._faults.append(Fault(method.upper(), re.compile(path_regex), status, hang, times, after))

    def hang(self, method: str, path_regex: str, *, times: int = 1, after: bool = False,
             seconds: float | None = None) -> None:
        self.fail(method, path_regex, hang=seconds or self.default_hang, times=times, after=after)

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def _take_fault(self, request: Request, *, after: bool) -> Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.after == after and fault.method in (request.method, "*") \
                        and fault.pattern.search(request.path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def requests(self, method: str, path_regex: str) -> int:
        """How many requests matching ``method`` and ``path_regex`` were answered (or dropped)."""
        pattern = re.compile(path_regex)
        return sum(1 for m, p, _ in list(self.log) if m == method and pattern.search(p))

    def expire_tokens(self) -> None:
        """Expire every access token now (the server forgets them early; the hub's clock disagrees)."""
        with self.db.tx() as db:
            db.execute("UPDATE access_tokens SET expires_at = ?", (self.now() - 1,))

    def enable_client(self, client_id: str, enabled: bool = True) -> None:
        """Administration → System → API Clients → Enable (§2.4)."""
        with self.db.tx() as db:
            changed = db.execute("UPDATE clients SET is_enabled = ? WHERE client_id = ?",
                                 (1 if enabled else 0, client_id)).rowcount
        assert changed, "no such client"

    def enable_all_clients(self) -> None:
        with self.db.tx() as db:
            db.execute("UPDATE clients SET is_enabled = 1")

    def client(self, client_id: str) -> dict[str, Any]:
        with self.db.tx() as db:
            row = db.execute("SELECT * FROM clients WHERE client_id = ?", (client_id,)).fetchone()
        assert row is not None
        return dict(row)

    def clients(self) -> list[dict[str, Any]]:
        with self.db.tx() as db:
            return [dict(r) for r in db.execute("SELECT * FROM clients ORDER BY issued_at")]

    def add_user(self, username: str, password: str, *, acl: str = "admin") -> None:
        with self.db.tx() as db:
            db.execute("INSERT OR REPLACE INTO users (username, password, uuid, acl) VALUES (?, ?, ?, ?)",
                       (username, password, str(uuid.uuid4()), acl))

    def revoke_user(self, username: str) -> None:
        """Logout / admin revoke of the trusted user: all its tokens die at once (§2.8, §7.5)."""
        with self.db.tx() as db:
            user = db.execute("SELECT uuid FROM users WHERE username = ?", (username,)).fetchone()
            db.execute("DELETE FROM trusted_users WHERE user_id = ?", (user["uuid"],))

    def refresh_tokens(self) -> list[dict[str, Any]]:
        with self.db.tx() as db:
            return [dict(r) for r in db.execute("SELECT token, revoked FROM refresh_tokens")]

    # -- test helpers: data -------------------------------------------------------------
    def seed_patients(self, count: int, *, prefix: str = "MRN", start: int = 1,
                      updated: float | None = None) -> list[str]:
        """Insert ``count`` patients directly (no API); returns their uuids."""
        when = updated if updated is not None else self.now()
        rows = []
        uuids = []
        for i in range(start, start + count):
            patient_uuid = str(uuid.uuid4())
            uuids.append(patient_uuid)
            rows.append((patient_uuid, f"{prefix}{i:06d}", f"Given{i}", "", f"Family{i}",
                         f"19{50 + i % 50:02d}-0{1 + i % 9}-1{i % 9}", "Female" if i % 2 else "Male",
                         f"555-01{i % 100:02d}", when))
        with self.db.tx() as db:
            db.executemany(
                "INSERT INTO patients (uuid, pubpid, fname, mname, lname, dob, sex, phone, ss, email, street, city,"
                " state, postal_code, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', '', '', '', '', '', ?)", rows)
        return uuids

    def touch_patient(self, patient_uuid: str, *, family: str | None = None) -> None:
        with self.db.tx() as db:
            if family:
                db.execute("UPDATE patients SET lname = ? WHERE uuid = ?", (family, patient_uuid))
            db.execute("UPDATE patients SET updated = ? WHERE uuid = ?", (self.now(), patient_uuid))

    def add_resource(self, resource: dict[str, Any], *, patient_uuid: str | None = None) -> str:
        resource = dict(resource)
        resource.setdefault("id", str(uuid.uuid4()))
        if patient_uuid:
            key = "subject" if resource["resourceType"] not in ("AllergyIntolerance",) else "patient"
            resource.setdefault(key, {"reference": f"Patient/{patient_uuid}"})
        with self.db.tx() as db:
            db.execute("INSERT INTO resources (uuid, type, patient_uuid, body, updated) VALUES (?, ?, ?, ?, ?)",
                       (resource["id"], resource["resourceType"], patient_uuid, json.dumps(resource), self.now()))
        return str(resource["id"])

    def patients(self, *, pubpid: str | None = None) -> list[dict[str, Any]]:
        with self.db.tx() as db:
            if pubpid is None:
                rows = db.execute("SELECT * FROM patients ORDER BY pid").fetchall()
            else:
                rows = db.execute("SELECT * FROM patients WHERE pubpid = ? ORDER BY pid", (pubpid,)).fetchall()
        return [dict(r) for r in rows]

    def documents(self, pid: int | None = None) -> list[dict[str, Any]]:
        with self.db.tx() as db:
            if pid is None:
                rows = db.execute("SELECT id, uuid, pid, category_id, filename, mimetype, hash FROM documents"
                                  " WHERE category_id != 18").fetchall()
            else:
                rows = db.execute("SELECT id, uuid, pid, category_id, filename, mimetype, hash FROM documents"
                                  " WHERE pid = ?", (pid,)).fetchall()
        return [dict(r) for r in rows]

    # -- test helper: the user's browser ------------------------------------------------
    def browser_login(self, authorize_url: str, *, username: str = "admin", password: str = "pass",
                      untick: Iterable[str] = (), deny: bool = False, follow: bool = True) -> str:
        """Play the user: open the URL, log in, consent, and follow the final redirect (to the hub's
        loopback when ``follow``). Returns that final redirect URL."""
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            response = browser.get(authorize_url)
            if response.status_code != 307:
                raise AssertionError(f"authorize answered {response.status_code}: {response.text[:200]}")
            browser.get(response.headers["location"])
            response = browser.post(f"{self.auth_base}/login", data={"username": username, "password": password})
            if response.status_code != 302:
                raise AssertionError("login failed")
            consent = browser.get(response.headers["location"]).text
            offered = re.findall(r'name="scope\[\]" value="([^"]+)"', consent)
            chosen = [("scope[]", html.unescape(s)) for s in offered if html.unescape(s) not in set(untick)]
            form = [("proceed", "0" if deny else "1"), *chosen]
            response = browser.post(f"{self.auth_base}/device/code", content=urlencode(form),
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
            if response.status_code != 302:
                raise AssertionError(f"consent answered {response.status_code}")
            final = response.headers["location"]
            if follow:
                httpx.get(final, timeout=10)
            return final

    # -- dispatch -----------------------------------------------------------------------
    def handle(self, request: Request) -> Response | None:
        fault = self._take_fault(request, after=False)
        if fault is not None:
            return self._misbehave(request, fault)
        try:
            response = self._route(request)
        except Exception as exc:  # an emulator bug must show up as a 500, like PHP's would
            response = resource_error(500, f"emulator error: {type(exc).__name__}: {exc}")
        fault = self._take_fault(request, after=True)
        if fault is not None:
            return self._misbehave(request, fault)
        self.log.append((request.method, request.path, response.status))
        return response

    def _misbehave(self, request: Request, fault: Fault) -> Response | None:
        if fault.hang is not None:
            self.log.append((request.method, request.path, 0))
            time.sleep(fault.hang)
            return None  # the connection is dropped: the client has timed out long ago
        self.log.append((request.method, request.path, fault.status))
        return resource_error(fault.status, "Internal Server Error")

    def _route(self, request: Request) -> Response:
        auth = f"/oauth2/{self.site}"
        fhir = f"/apis/{self.site}/fhir"
        api = f"/apis/{self.site}/api"
        path = request.path
        if path.startswith(auth):
            return self._oauth(request, path[len(auth):])
        if path.startswith(fhir):
            return self._fhir(request, path[len(fhir):])
        if path.startswith(api):
            return self._api(request, path[len(api):])
        return resource_error(404, "not found")

    # =================================================================== OAuth2 (§2)

    def _oauth(self, request: Request, route: str) -> Response:
        if route == "/.well-known/openid-configuration" and request.method == "GET":
            return Response.json(200, self.openid_configuration())
        if route == "/registration" and request.method == "POST":
            return self._register(request)
        if route.startswith("/client/") and request.method == "GET":
            return self._client_readback(request, route[len("/client/"):])
        if route == "/authorize" and request.method in ("GET", "POST"):
            return self._authorize(request)
        if route == "/provider/login" and request.method == "GET":  # the HTML login form (§2.5)
            return Response.html(200, '<form method="post" action="login"><input name="username">'
                                      '<input name="password" type="password"><button>Login</button></form>')
        if route == "/login" and request.method == "POST":
            return self._login(request)
        if route == "/scope-authorize-confirm" and request.method == "GET":
            return self._consent_page(request)
        if route == "/device/code" and request.method == "POST":
            return self._issue_code(request)
        if route == "/token":
            if request.method == "OPTIONS":
                return Response.empty(200)  # OPTIONS returns 200 (§2.6)
            if request.method == "POST":
                return self._token(request)
        if route == "/jwk" and request.method == "GET":  # the server JWKS, RS256 (§2.1)
            return Response.json(200, {"keys": [self.site_key.as_dict(private=False)]})
        # /userinfo is advertised but not implemented (§2.1): 404 like every unknown route.
        return resource_error(404, "not found")

    def openid_configuration(self) -> dict[str, Any]:
        """The hard-coded OIDC template (§2.2): no client_credentials, only client_secret_post,
        PKCE "plain" advertised (and rejected)."""
        auth = self.auth_base
        return {
            "issuer": auth,
            "authorization_endpoint": f"{auth}/authorize",
            "token_endpoint": f"{auth}/token",
            "jwks_uri": f"{auth}/jwk",
            "userinfo_endpoint": f"{auth}/userinfo",
            "registration_endpoint": f"{auth}/registration",
            "end_session_endpoint": f"{auth}/logout",
            "introspection_endpoint": f"{auth}/introspect",
            "scopes_supported": server_scopes(self.system_scopes),
            "response_types_supported": ["code", "token", "id_token", "code token", "code id_token",
                                         "token id_token", "code token id_token"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["public"],
            "claims_supported": ["aud", "email", "exp", "family_name", "fhirUser", "given_name", "iat", "iss",
                                 "name", "sub"],
            "require_request_uri_registration": ["false"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "RS384"],
            "claims_locales_supported": ["en-US"],
            "ui_locales_supported": ["en-US"],
        }

    def smart_configuration(self) -> dict[str, Any]:
        """The SMART document (§2.2): issuer is the FHIR base; scopes_supported nested ``[[...]]``."""
        auth = self.auth_base
        return {
            "issuer": self.fhir_base,
            "jwks_uri": f"{auth}/jwk",
            "authorization_endpoint": f"{auth}/authorize",
            "token_endpoint": f"{auth}/token",
            "introspection_endpoint": f"{auth}/introspect",
            "grant_types_supported": ["client_credentials", "authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "response_types_supported": ["code", "token", "id_token", "code token", "code id_token",
                                         "token id_token", "code token id_token"],
            "scopes_supported": [server_scopes(self.system_scopes)],
            "capabilities": ["launch-ehr", "launch-standalone", "client-confidential-symmetric",
                             "client-confidential-asymmetric", "client-public", "context-banner",
                             "context-ehr-patient", "context-style", "context-standalone-patient",
                             "sso-openid-connect", "permission-user", "permission-patient", "permission-offline",
                             "permission-v1", "permission-v2", "authorize-post", "context-ehr-encounter"],
        }

    # -- registration (§2.3, §2.4) -----------------------------------------------------
    def _register(self, request: Request) -> Response:
        if not request.header("content-type").startswith("application/json"):
            return oauth_error(400, "invalid_client_metadata", "Content-Type must be application/json")
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            return oauth_error(400, "invalid_client_metadata", "Invalid JSON")
        if not isinstance(data, dict):
            return oauth_error(400, "invalid_client_metadata", "Invalid JSON")
        # Rule 1: scope is effectively required and every token must be a server scope.
        scope = data.get("scope")
        if not isinstance(scope, str) or not scope.strip():
            return oauth_error(400, "invalid_scope", "The requested scope is invalid, unknown, or malformed",
                               hint="scope is required")
        scopes = scope.split()
        for s in scopes:
            if not is_known_scope(s, self.system_scopes):
                return oauth_error(400, "invalid_scope", "The requested scope is invalid, unknown, or malformed",
                                   hint=f"Check the `{s}` scope")
        # Rule 2: only application_type "private" is confidential.
        private = data.get("application_type") == "private"
        if not private and any(s.startswith(("user/", "system/")) for s in scopes):
            return oauth_error(400, "invalid_client_metadata",
                               "Public clients may not request user or system scopes")
        # Rule 3: a private client asking for system/ scopes must send jwks or jwks_uri.
        jwks = data.get("jwks")
        if isinstance(jwks, str):
            try:
                jwks = json.loads(jwks)
            except ValueError:
                jwks = None
        if private and any(s.startswith("system/") for s in scopes) and not (jwks or data.get("jwks_uri")):
            return oauth_error(400, "invalid_client_metadata", "jwks is invalid")
        # Rule 4: redirect_uris is required.
        redirect_uris = data.get("redirect_uris")
        if not isinstance(redirect_uris, list) or not redirect_uris:
            return oauth_error(400, "invalid_redirect_uri", "redirect_uris is invalid")
        method = data.get("token_endpoint_auth_method")
        if method is not None and method not in ("client_secret_basic", "client_secret_post", "private_key_jwt"):
            return oauth_error(400, "invalid_client_metadata", "token_endpoint_auth_method is invalid")
        client_id = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        secret = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode() if private else ""
        reg_token = secrets.token_urlsafe(32)
        reg_path = secrets.token_urlsafe(16)
        role = "user" if private else "patient"
        # §2.4: disabled when manual approval is on, a public client asks for launch, or a
        # confidential client asks for any user/ or system/ scope.
        disabled = self.manual_approval or (not private and "launch" in scopes) or (
            private and any(s.startswith(("user/", "system/")) for s in scopes))
        issued = int(self.now())
        grant_types = data.get("grant_types") or ["authorization_code"]
        accepted = {k: data[k] for k in (
            "contacts", "application_type", "client_name", "logo_uri", "redirect_uris", "post_logout_redirect_uris",
            "token_endpoint_auth_method", "policy_uri", "tos_uri", "jwks_uri", "sector_identifier_uri",
            "subject_type", "default_max_age", "require_auth_time", "default_acr_values", "initiate_login_uri",
            "request_uris", "response_types", "grant_types", "scope", "dsi_type", "dsi_source_attributes",
        ) if k in data}
        if jwks:
            accepted["jwks"] = jwks
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO clients (client_id, client_secret, client_name, client_role, scope, redirect_uris, jwks,"
                " jwks_uri, grant_types, is_enabled, registration_access_token, registration_uri_path, issued_at,"
                " metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (client_id, secret, data.get("client_name") or "", role, " ".join(scopes), json.dumps(redirect_uris),
                 json.dumps(jwks) if jwks else None, data.get("jwks_uri"),
                 "|".join(grant_types),  # stored pipe-joined (§2.3 rule 6)
                 0 if disabled else 1, reg_token, reg_path, issued, json.dumps(accepted)))
        answer = dict(accepted)
        answer.update(
            client_id=client_id, client_secret=secret, registration_access_token=reg_token,
            registration_client_uri=f"{self.auth_base}/client/{reg_path}", client_id_issued_at=issued,
            client_secret_expires_at=0, client_role=role, dsi_type=str(data.get("dsi_type") or "none"),
        )
        # HTTP 200 (not 201), Cache-Control: no-store (§2.3, §8).
        return Response.json(200, answer, headers={"Cache-Control": "no-store"})

    def _client_readback(self, request: Request, reg_path: str) -> Response:
        token = request.header("authorization").removeprefix("Bearer ").strip()
        with self.db.tx() as db:
            row = db.execute("SELECT * FROM clients WHERE registration_uri_path = ?", (reg_path,)).fetchone()
        if row is None or not token or not secrets.compare_digest(token, row["registration_access_token"]):
            return oauth_error(403, "access_denied", "The resource owner or authorization server denied the request.")
        # Bug kept (§2.3): application_type holds the stored client_role.
        return Response.json(200, {"client_id": row["client_id"], "client_secret": row["client_secret"],
                                   "application_type": row["client_role"], "client_name": row["client_name"],
                                   "redirect_uris": json.loads(row["redirect_uris"]), "dsi_type": "none"})

    # -- authorization code flow (§2.5) --------------------------------------------------
    def _client_row(self, client_id: str | None) -> Any:
        if not client_id:
            return None
        with self.db.tx() as db:
            return db.execute("SELECT * FROM clients WHERE client_id = ?", (client_id,)).fetchone()

    def _authorize(self, request: Request) -> Response:
        params = dict(request.query)
        if request.method == "POST":  # form fields are copied into the query (§2.5)
            params.update(request.form_dict())
        client = self._client_row(params.get("client_id"))
        if client is None or not client["is_enabled"]:
            return oauth_error(401, "invalid_client", "Client authentication failed")
        if params.get("redirect_uri") not in json.loads(client["redirect_uris"]):
            # An unregistered redirect URI is reported as invalid_client (#6644, §2.5).
            return oauth_error(401, "invalid_client", "Client authentication failed")
        if params.get("response_type") != "code":
            return oauth_error(400, "unsupported_response_type", "The authorization server does not support "
                               "obtaining an authorization code using this method")
        aud = params.get("aud")
        if aud is not None and aud not in (self.fhir_base, self.api_base, f"{self.base_url}/apis/{self.site}/portal"):
            return oauth_error(400, "invalid_request", "Aud parameter did not match authorized server")
        challenge = params.get("code_challenge")
        if challenge and params.get("code_challenge_method", "plain") != "S256":
            # "plain" is advertised in the OIDC document but rejected (§2.2, §2.5).
            return oauth_error(400, "invalid_request", "Code challenge method must be S256")
        if client["client_role"] == "patient" and not challenge:
            return oauth_error(400, "invalid_request", "Code challenge must be provided for public clients")
        requested = (params.get("scope") or "").split()
        registered = set(client["scope"].split())
        bad = [s for s in requested if s not in registered]
        if bad:
            return oauth_error(400, "invalid_scope", "The requested scope is invalid, unknown, or malformed",
                               hint=f"Check the `{bad[0]}` scope")
        sid = secrets.token_urlsafe(16)
        with self.db.tx() as db:
            db.execute("INSERT INTO sessions (sid, username, request) VALUES (?, NULL, ?)", (sid, json.dumps(params)))
        return Response.redirect(307, f"{self.auth_base}/provider/login",
                                 headers={"Set-Cookie": f"OpenEMR={sid}; Path=/; HttpOnly"})

    def _session(self, request: Request) -> Any:
        sid = request.cookie("OpenEMR")
        if not sid:
            return None
        with self.db.tx() as db:
            return db.execute("SELECT * FROM sessions WHERE sid = ?", (sid,)).fetchone()

    def _login(self, request: Request) -> Response:
        """The login form's POST (§2.5); then on to the consent screen."""
        session = self._session(request)
        form = request.form_dict()
        with self.db.tx() as db:
            user = db.execute("SELECT * FROM users WHERE username = ?", (form.get("username"),)).fetchone()
            if session is None or user is None or user["password"] != form.get("password"):
                return Response.html(200, "<p>Invalid username or password</p>")
            db.execute("UPDATE sessions SET username = ? WHERE sid = ?", (user["username"], session["sid"]))
        return Response.redirect(302, f"{self.auth_base}/scope-authorize-confirm")

    def _consent_page(self, request: Request) -> Response:
        """The consent screen: one ticked box per requested scope; the user may untick (§2.5)."""
        session = self._session(request)
        if session is None or not session["username"]:
            return Response.redirect(302, f"{self.auth_base}/provider/login")
        params = json.loads(session["request"])
        boxes = "".join(f'<label><input type="checkbox" name="scope[]" value="{html.escape(s)}" checked>'
                        f"{html.escape(s)}</label>" for s in (params.get("scope") or "").split())
        return Response.html(200, f'<form method="post" action="device/code">{boxes}'
                                  '<button name="proceed" value="1">Authorize</button></form>')

    def _issue_code(self, request: Request) -> Response:
        session = self._session(request)
        if session is None or not session["username"]:
            return Response.redirect(302, f"{self.auth_base}/provider/login")
        params = json.loads(session["request"])
        form = request.form()
        redirect = params["redirect_uri"]
        state = params.get("state")
        if dict(form).get("proceed") == "0":
            query = {"error": "access_denied", "error_description": "The user denied the request"}
            if state:
                query["state"] = state
            return Response.redirect(302, f"{redirect}?{urlencode(query)}")
        # The user may un-tick scopes on the consent screen (§2.5).
        confirmed = [v for k, v in form if k == "scope[]"]
        requested = (params.get("scope") or "").split()
        granted = [s for s in requested if s in confirmed]
        code = secrets.token_urlsafe(32)
        with self.db.tx() as db:
            user = db.execute("SELECT uuid FROM users WHERE username = ?", (session["username"],)).fetchone()
            db.execute("INSERT INTO auth_codes (code, client_id, user_id, redirect_uri, scopes, code_challenge,"
                       " expires_at, used, nonce) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                       (code, params["client_id"], user["uuid"], redirect, " ".join(granted),
                        params.get("code_challenge"), self.now() + CODE_TTL, params.get("nonce")))
            db.execute("INSERT OR IGNORE INTO trusted_users (client_id, user_id) VALUES (?, ?)",
                       (params["client_id"], user["uuid"]))
            db.execute("DELETE FROM sessions WHERE sid = ?", (session["sid"],))
        query = {"code": code}
        if state:
            query["state"] = state
        return Response.redirect(302, f"{redirect}?{urlencode(query)}")

    # -- token endpoint (§2.6) ------------------------------------------------------------
    def _token(self, request: Request) -> Response:
        if not request.header("content-type").startswith("application/x-www-form-urlencoded"):
            return oauth_error(400, "invalid_request", "The request is missing a required parameter")
        form = request.form_dict()
        grant = form.get("grant_type")
        if grant == "client_credentials":
            return self._client_credentials(form)
        if grant == "authorization_code":
            return self._authorization_code(request, form)
        if grant == "refresh_token":
            return self._refresh(request, form)
        return oauth_error(400, "unsupported_grant_type", "The authorization grant type is not supported by the "
                           "authorization server.")

    def _issue(self, client_id: str, user_id: str, role: str, scopes: list[str], ttl: int) -> tuple[str, str]:
        """An access token: a JWT signed RS256 with the site key; aud=client_id, jti, iat, nbf, exp, sub,
        scopes, iss (§2.6). Its row lets the server revoke it (§2.8)."""
        now = self.now()
        jti = secrets.token_hex(20)
        claims = {"aud": client_id, "jti": jti, "iat": int(now), "nbf": int(now), "exp": int(now + ttl),
                  "sub": user_id, "scopes": scopes, "iss": self.auth_base}
        token = jwt.encode({"alg": "RS256", "kid": self.site_key.kid, "typ": "JWT"}, claims, self.site_key)
        with self.db.tx() as db:
            db.execute("INSERT INTO access_tokens (jti, client_id, user_id, role, scopes, expires_at, revoked)"
                       " VALUES (?, ?, ?, ?, ?, ?, 0)", (jti, client_id, user_id, role, " ".join(scopes), now + ttl))
        return token, jti

    @staticmethod
    def _granted(scopes: list[str]) -> str:
        # The token response's scope has every api:* scope removed (§2.6).
        return " ".join(s for s in scopes if not s.startswith("api:"))

    def _assertion_client(self, form: dict[str, str]) -> tuple[Any, Response | None]:
        """Verify a JWT client assertion (JWTClientAuthenticationService, §2.6); failures are 400
        invalid_client."""
        assertion = form.get("client_assertion") or ""
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            return None, oauth_error(400, "invalid_client", "Client authentication failed",
                                     hint="assertion type is not supported")
        try:
            header_b64, payload_b64 = assertion.split(".")[:2]
            header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
            unverified = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
        except ValueError:
            return None, oauth_error(400, "invalid_client", "Client authentication failed", hint="malformed JWT")
        client = self._client_row(unverified.get("iss"))
        if client is None:
            return None, oauth_error(400, "invalid_client", "Client authentication failed", hint="unknown client")
        if not client["is_enabled"]:
            return None, oauth_error(400, "invalid_client", "Client authentication failed",
                                     hint="client is disabled")
        if header.get("alg") != "RS384":
            return None, oauth_error(400, "invalid_client", "Client authentication failed", hint="alg must be RS384")
        try:
            if client["jwks"]:
                keys = KeySet.import_key_set(json.loads(client["jwks"]))
            else:
                keys = KeySet.import_key_set(httpx.get(client["jwks_uri"], timeout=5).json())
            claims = jwt.decode(assertion, keys, algorithms=["RS384"]).claims
        except (JoseError, ValueError, httpx.HTTPError) as exc:
            return None, oauth_error(400, "invalid_client", "Client authentication failed",
                                     hint=f"signature: {type(exc).__name__}")
        now = self.now()
        skew = 60
        problem = None
        if claims.get("iss") != client["client_id"] or claims.get("sub") != client["client_id"]:
            problem = "iss and sub must be the client_id"
        elif claims.get("aud") != self.token_url and claims.get("aud") != [self.token_url]:
            problem = "aud must be the token URL"
        elif "exp" in claims and claims["exp"] < now - skew:
            problem = "assertion expired"
        elif "exp" in claims and claims["exp"] > now + 86400 + skew:
            problem = "exp too far ahead"
        elif "iat" in claims and claims["iat"] < now - 300 - skew:
            problem = "iat too old"
        elif not claims.get("jti"):
            problem = "jti required"
        if problem:
            return None, oauth_error(400, "invalid_client", "Client authentication failed", hint=problem)
        with self.db.tx() as db:
            if db.execute("SELECT 1 FROM jwt_history WHERE jti = ?", (claims["jti"],)).fetchone():
                return None, oauth_error(400, "invalid_client", "Client authentication failed", hint="jti replayed")
            db.execute("INSERT INTO jwt_history (jti, client_id, expires_at) VALUES (?, ?, ?)",
                       (claims["jti"], client["client_id"], claims.get("exp", now)))
        return client, None

    def _client_credentials(self, form: dict[str, str]) -> Response:
        if "client_secret" in form and "client_assertion" not in form:
            # A client secret is rejected for client_credentials (§2.6).
            return oauth_error(400, "invalid_client", "Client authentication failed",
                               hint="assertion type is not supported")
        client, error = self._assertion_client(form)
        if error is not None:
            return error
        registered = client["scope"].split()
        requested = (form.get("scope") or "").split() or registered
        for scope in requested:
            if scope not in registered or not is_known_scope(scope, self.system_scopes):
                return oauth_error(400, "invalid_scope", "The requested scope is invalid, unknown, or malformed",
                                   hint=f"Check the `{scope}` scope")
        token, _ = self._issue(client["client_id"], SYSTEM_USER_UUID, "system", requested, SYSTEM_TTL)
        return Response.json(200, {"token_type": "Bearer", "expires_in": SYSTEM_TTL, "access_token": token,
                                   "scope": self._granted(requested)})

    def _basic_or_form_client(self, request: Request, form: dict[str, str]) -> tuple[Any, Response | None]:
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        basic = request.header("authorization")
        if basic.startswith("Basic "):
            decoded = base64.b64decode(basic[6:]).decode()
            client_id, _, secret = decoded.partition(":")
        if form.get("client_assertion"):
            return self._assertion_client(form)
        client = self._client_row(client_id)
        if client is None or not client["is_enabled"]:
            # Disabled clients get invalid_client (CustomAuthCodeGrant, CustomRefreshTokenGrant, §2.4).
            return None, oauth_error(401, "invalid_client", "Client authentication failed")
        if secret is not None and client["client_secret"] and not secrets.compare_digest(secret,
                                                                                          client["client_secret"]):
            return None, oauth_error(401, "invalid_client", "Client authentication failed")
        return client, None

    def _tokens_for_user(self, client_id: str, user_id: str, scopes: list[str], nonce: str | None) -> dict[str, Any]:
        token, jti = self._issue(client_id, user_id, "users", scopes, ACCESS_TTL)
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": ACCESS_TTL, "access_token": token,
                                "scope": self._granted(scopes)}
        if "offline_access" in scopes:  # no refresh token without offline_access (§2.5, §7.6)
            refresh = secrets.token_urlsafe(48)
            with self.db.tx() as db:
                db.execute("INSERT INTO refresh_tokens (token, client_id, user_id, scopes, expires_at, revoked,"
                           " access_jti) VALUES (?, ?, ?, ?, ?, 0, ?)",
                           (refresh, client_id, user_id, " ".join(scopes), self.now() + REFRESH_TTL, jti))
            body["refresh_token"] = refresh
        if "openid" in scopes:
            now = int(self.now())
            claims = {"aud": client_id, "iss": self.auth_base, "sub": user_id, "iat": now, "exp": now + ACCESS_TTL,
                      "fhirUser": f"{self.fhir_base}/Practitioner/{user_id}"}
            if nonce:
                claims["nonce"] = nonce
            body["id_token"] = jwt.encode({"alg": "RS256", "kid": self.site_key.kid}, claims, self.site_key)
        return body

    def _authorization_code(self, request: Request, form: dict[str, str]) -> Response:
        client, error = self._basic_or_form_client(request, form)
        if error is not None:
            return error
        with self.db.tx() as db:
            row = db.execute("SELECT * FROM auth_codes WHERE code = ?", (form.get("code") or "",)).fetchone()
            if row is not None and not row["used"]:
                db.execute("UPDATE auth_codes SET used = 1 WHERE code = ?", (row["code"],))
        # Expired, reused, or PKCE mismatch: invalid_grant (§10).
        if row is None or row["client_id"] != client["client_id"]:
            return oauth_error(400, "invalid_grant", "The provided authorization grant is invalid",
                               hint="Cannot decrypt the authorization code")
        if row["used"]:
            return oauth_error(400, "invalid_grant", "The provided authorization grant is invalid",
                               hint="Authorization code has been revoked")
        if row["expires_at"] < self.now():
            return oauth_error(400, "invalid_grant", "The provided authorization grant is invalid",
                               hint="Authorization code has expired")
        if form.get("redirect_uri") != row["redirect_uri"]:
            return oauth_error(400, "invalid_client", "Client authentication failed")
        if row["code_challenge"]:
            verifier = form.get("code_verifier") or ""
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if not verifier or digest != row["code_challenge"]:
                return oauth_error(400, "invalid_grant", "The provided authorization grant is invalid",
                                   hint="Failed to verify `code_verifier`.")
        body = self._tokens_for_user(client["client_id"], row["user_id"], row["scopes"].split(), row["nonce"])
        return Response.json(200, body)

    def _refresh(self, request: Request, form: dict[str, str]) -> Response:
        client, error = self._basic_or_form_client(request, form)
        if error is not None:
            return error
        with self.db.tx() as db:
            row = db.execute("SELECT * FROM refresh_tokens WHERE token = ?",
                             (form.get("refresh_token") or "",)).fetchone()
            trusted = row is not None and db.execute(
                "SELECT 1 FROM trusted_users WHERE client_id = ? AND user_id = ?",
                (row["client_id"], row["user_id"])).fetchone() is not None
        if row is None or row["client_id"] != client["client_id"] or row["expires_at"] < self.now():
            return oauth_error(400, "invalid_grant", "The refresh token is invalid.", hint="Cannot decrypt the "
                               "refresh token")
        if row["revoked"]:
            return oauth_error(400, "invalid_grant", "The refresh token is invalid.", hint="Token has been revoked")
        if not trusted:
            # Logout / admin revoke deleted the trusted user (§2.8, §10).
            return oauth_error(400, "invalid_request", "Refresh Token revoked or logged out")
        scopes = row["scopes"].split()
        if form.get("scope") and set(form["scope"].split()) != set(scopes):
            # The refresh grant wants exactly the original scopes (§2.7).
            return oauth_error(400, "invalid_scope", "The requested scope is invalid, unknown, or malformed")
        with self.db.tx() as db:
            # Rotation: the old refresh token and its access token are revoked (§2.6, §10).
            db.execute("UPDATE refresh_tokens SET revoked = 1 WHERE token = ?", (row["token"],))
            db.execute("UPDATE access_tokens SET revoked = 1 WHERE jti = ?", (row["access_jti"],))
        return Response.json(200, self._tokens_for_user(client["client_id"], row["user_id"], scopes, None))

    # -- bearer tokens on resource requests (§2.8) ---------------------------------------
    def _caller(self, request: Request) -> tuple[Caller | None, Response | None]:
        header = request.header("authorization")
        if not header.startswith("Bearer "):
            return None, resource_error(401, DENIED)
        try:
            claims = jwt.decode(header[7:], self.site_key, algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            return None, resource_error(401, DENIED)
        now = self.now()
        if claims.get("exp", 0) < now:
            return None, resource_error(401, DENIED)
        with self.db.tx() as db:
            row = db.execute("SELECT * FROM access_tokens WHERE jti = ?", (claims.get("jti"),)).fetchone()
            if row is None or row["revoked"] or row["expires_at"] < now:
                return None, resource_error(401, DENIED)
            if row["role"] == "system":
                return Caller(row["client_id"], row["user_id"], "system", row["scopes"].split(), "system"), None
            trusted = db.execute("SELECT 1 FROM trusted_users WHERE client_id = ? AND user_id = ?",
                                 (row["client_id"], row["user_id"])).fetchone()
            if trusted is None:
                return None, oauth_error(400, "invalid_request", "Refresh Token revoked or logged out")
            user = db.execute("SELECT acl FROM users WHERE uuid = ?", (row["user_id"],)).fetchone()
        return Caller(row["client_id"], row["user_id"], "users", row["scopes"].split(),
                      user["acl"] if user else "clinician"), None

    # =================================================================== FHIR (§3)

    def _fhir(self, request: Request, route: str) -> Response:
        if route == "/metadata" and request.method == "GET":
            return Response.json(200, self._capability_statement())
        if route == "/.well-known/smart-configuration" and request.method == "GET":
            return Response.json(200, self.smart_configuration())
        caller, error = self._caller(request)
        if error is not None:
            return error
        assert caller is not None
        ctx = "system" if caller.role == "system" else "user"
        parts = [p for p in route.split("/") if p]
        if parts == ["$export"] or parts == ["Patient", "$export"]:
            op_resource = "Patient" if parts[0] == "Patient" else "*"
            if caller.role != "system" or not grants(caller.scopes, "system", op_resource, "$export"):
                return resource_error(401, "Unauthorized")
            return self._export_start(request)
        if parts == ["$bulkdata-status"]:
            if caller.role != "system" or not grants(caller.scopes, "system", "*", "$bulkdata-status"):
                return resource_error(401, "Unauthorized")
            return self._export_status(request)
        if not parts:
            return resource_error(404, "not found")
        resource_type = parts[0]
        if resource_type == "Binary" and len(parts) == 2 and request.method == "GET":
            if not grants(caller.scopes, ctx, "Binary", "r"):
                return resource_error(401, "Unauthorized")
            if caller.acl == "clinician":
                return resource_error(403, "Organization policy does not have permit access resource")
            return self._binary(parts[1])
        if resource_type != "Patient" and resource_type not in READABLE:
            return resource_error(404, "not found")
        # The permission letter follows the method (§2.7).
        if len(parts) == 1 and request.method == "GET":
            need, params = "s", request.query
        elif len(parts) == 2 and parts[1] == "_search" and request.method == "POST":
            need, params = "s", request.form()  # POST _search is normalised to GET (§3)
        elif len(parts) == 2 and request.method == "GET":
            need, params = "r", []
        elif len(parts) == 1 and request.method == "POST" and resource_type == "Patient":
            need, params = "c", []
        elif len(parts) == 2 and request.method == "PUT" and resource_type == "Patient":
            need, params = "u", []
        else:
            return resource_error(404, "not found")
        if not grants(caller.scopes, ctx, resource_type, need):
            return resource_error(401, "Unauthorized")  # a missing scope is 401 (§2.8)
        if caller.acl == "clinician" and (resource_type in ADMIN_ONLY or resource_type in ADMIN_USERS
                                          or (resource_type == "Encounter" and need == "r")):
            return resource_error(403, "Organization policy does not have permit access resource")
        if need == "c":
            return self._patient_create(request)
        if need == "u":
            return self._patient_update(request, parts[1])
        if need == "r":
            found = self._find(resource_type, [("_id", parts[1])])
            if not found:
                return resource_error(404, "Resource not found")
            return Response.json(200, found[0])
        self_url = f"{self.fhir_base}/{resource_type}"
        if params:
            self_url += "?" + urlencode(params)
        return Response.json(200, F.bundle(self.fhir_base, self_url, self._find(resource_type, params), self.now()))

    def _capability_statement(self) -> dict[str, Any]:
        """``GET /fhir/metadata`` without auth: FHIR 4.0.1, JSON only, US Core + bulk data (§3.3)."""
        resources = [{"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]}
                     for t in sorted(READABLE | {"Patient"})]
        return {
            "resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
            "format": ["application/json"], "date": F.instant(self.now()),
            "instantiates": ["http://hl7.org/fhir/us/core/CapabilityStatement/us-core-server",
                             "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
            "rest": [{"mode": "server", "security": {"service": [{"coding": [{"code": "SMART-on-FHIR"}]}]},
                      "resource": resources}],
        }

    # -- searching --------------------------------------------------------------------
    def _find(self, resource_type: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        if resource_type == "Patient":
            return self._find_patients(params)
        items = self._stored(resource_type)
        if resource_type == "DocumentReference":
            items += self._document_references()
        # Every resource but Patient ignores _count/_offset and returns all matches (§3.2, #12330).
        for name, value in params:
            if name in ("_count", "_offset", "_format"):
                continue
            items = [r for r in items if _matches(r, name, value)]
        return [r for r, _updated in items]

    def _stored(self, resource_type: str) -> list[tuple[dict[str, Any], float]]:
        """Clinical resources as seeded by tests; ids are uuids (§3), meta.lastUpdated for _lastUpdated (§3.2)."""
        with self.db.tx() as db:
            rows = db.execute("SELECT body, updated, patient_uuid FROM resources WHERE type = ? ORDER BY rowid",
                              (resource_type,)).fetchall()
        out = []
        for row in rows:
            resource = json.loads(row["body"])
            resource["meta"] = {"versionId": "1", "lastUpdated": F.instant(row["updated"])}
            resource["_patient"] = row["patient_uuid"]
            out.append((resource, row["updated"]))
        return out

    def _document_references(self) -> list[tuple[dict[str, Any], float]]:
        """Documents uploaded through the standard API surface as DocumentReference (§3.2)."""
        with self.db.tx() as db:
            rows = db.execute(
                "SELECT d.*, p.uuid AS puuid, c.name AS category FROM documents d"
                " LEFT JOIN patients p ON p.pid = d.pid LEFT JOIN categories c ON c.id = d.category_id"
                " WHERE d.category_id != 18").fetchall()
        out = []
        for row in rows:
            out.append(({
                "resourceType": "DocumentReference", "id": row["uuid"],
                "meta": {"versionId": "1", "lastUpdated": F.instant(row["created"])},
                "status": "current",
                "category": [{"text": row["category"]}],
                "subject": {"reference": f"Patient/{row['puuid']}"} if row["puuid"] else None,
                "date": F.instant(row["created"]),
                "content": [{"attachment": {"contentType": row["mimetype"],
                                            "url": f"{self.fhir_base}/Binary/{row['uuid']}",
                                            "title": row["filename"]}}],
                "_patient": row["puuid"],
            }, row["created"]))
        return out

    def _find_patients(self, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        where, args = [], []
        count, offset = None, 0
        for name, value in params:
            if name == "_count":
                count = min(int(value), 200) or None  # max 200; 0 means unlimited (§3.2)
            elif name == "_offset":
                offset = int(value)
            elif name == "_id":
                where.append("uuid = ?")
                args.append(value)
            elif name == "identifier":
                # identifier search maps to ss and pubpid (§3.2)
                token = value.split("|")[-1]
                where.append("(pubpid = ? OR ss = ?)")
                args += [token, token]
            elif name in ("family", "given", "name"):
                columns = {"family": ["lname"], "given": ["fname", "mname"], "name": ["fname", "mname", "lname"]}
                where.append("(" + " OR ".join(f"lower({c}) LIKE ?" for c in columns[name]) + ")")
                args += [f"%{value.lower()}%"] * len(columns[name])
            elif name == "birthdate":
                where.append("dob = ?")
                args.append(value)
            elif name == "gender":
                where.append("sex = ?")
                args.append({"male": "Male", "female": "Female"}.get(value, value))
            elif name == "_lastUpdated":
                op, stamp = _prefix(value)
                where.append(f"updated {op} ?")
                args.append(F.parse_instant(stamp))
        sql = "SELECT * FROM patients"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY pid"
        if count:
            sql += f" LIMIT {int(count)} OFFSET {int(offset)}"
        elif offset:
            sql += f" LIMIT -1 OFFSET {int(offset)}"
        with self.db.tx() as db:
            rows = db.execute(sql, args).fetchall()
        return [F.render_patient(r) for r in rows]

    # -- Patient writes (§3.1) ---------------------------------------------------------------
    def _patient_create(self, request: Request) -> Response:
        try:
            resource = json.loads(request.body)  # json_decode: application/fhir+json works (§3.1)
        except ValueError:
            return Response.json(400, {"validationErrors": {"body": "invalid JSON"}})
        columns, errors = F.parse_patient(resource)
        if errors:
            return Response.json(400, {"validationErrors": errors})
        patient_uuid = str(uuid.uuid4())
        with self.db.tx() as db:
            cursor = db.execute(
                "INSERT INTO patients (uuid, pubpid, fname, mname, lname, dob, sex, ss, phone, email, street, city,"
                " state, postal_code, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (patient_uuid, columns["pubpid"], columns["fname"], columns["mname"], columns["lname"],
                 columns["dob"], columns["sex"], columns["ss"], columns["phone"], columns["email"],
                 columns["street"], columns["city"], columns["state"], columns["postal_code"], self.now()))
            pid = cursor.lastrowid
            if not columns["pubpid"]:
                db.execute("UPDATE patients SET pubpid = ? WHERE pid = ?", (str(pid), pid))
        # 201 with an OpenEMR body {"pid", "uuid"}, not a Patient, and no Location (§3.1, §8).
        return Response.json(201, {"pid": pid, "uuid": patient_uuid})

    def _patient_update(self, request: Request, patient_uuid: str) -> Response:
        try:
            resource = json.loads(request.body)
        except ValueError:
            return Response.json(400, {"validationErrors": {"body": "invalid JSON"}})
        with self.db.tx() as db:
            exists = db.execute("SELECT pid, pubpid FROM patients WHERE uuid = ?", (patient_uuid,)).fetchone()
        if exists is None:
            return Response.json(404, [])  # a missing record is 404 [] (§3.1)
        columns, errors = F.parse_patient(resource)
        if errors:
            return Response.json(400, {"validationErrors": errors})
        columns["pubpid"] = columns["pubpid"] or exists["pubpid"]
        with self.db.tx() as db:
            db.execute("UPDATE patients SET pubpid=?, fname=?, mname=?, lname=?, dob=?, sex=?, ss=?, phone=?, email=?,"
                       " street=?, city=?, state=?, postal_code=?, updated=? WHERE uuid = ?",
                       (columns["pubpid"], columns["fname"], columns["mname"], columns["lname"], columns["dob"],
                        columns["sex"], columns["ss"], columns["phone"], columns["email"], columns["street"],
                        columns["city"], columns["state"], columns["postal_code"], self.now(), patient_uuid))
        return Response.json(200, self._find_patients([("_id", patient_uuid)])[0])

    # -- bulk export (§3.4) -------------------------------------------------------------------
    def _export_start(self, request: Request) -> Response:
        if request.header("accept") != "application/fhir+json" or request.header("prefer") != "respond-async":
            return Response.json(400, {"resourceType": "OperationOutcome", "issue": [{
                "severity": "error", "code": "processing",
                "diagnostics": "Accept must be application/fhir+json and Prefer must be respond-async"}]})
        types = [t for t in (request.arg("_type") or "Patient").split(",") if t]
        since = request.arg("_since")
        since_ts = F.parse_instant(since) if since else None
        outputs = []
        job = str(uuid.uuid4())
        # Synchronous: the whole export runs inside this request (§3.4). _type is not checked
        # against the token's scopes (#8668).
        for resource_type in types:
            if resource_type == "Patient":
                params = [("_lastUpdated", f"ge{since}")] if since else []
                resources = self._find_patients(params)
            elif resource_type in READABLE:
                resources = [r for r, updated in self._stored(resource_type) if since_ts is None or updated >= since_ts]
            else:
                continue
            for r in resources:
                r.pop("_patient", None)
            content = "".join(json.dumps(r) + "\n" for r in resources).encode("utf-8")
            with self.db.tx() as db:
                # Files are documents in category "FHIR Export Document" (id 18 here).
                cursor = db.execute(
                    "INSERT INTO documents (uuid, pid, category_id, filename, mimetype, hash, content, docdate,"
                    " created) VALUES (?, 0, 18, ?, 'application/fhir+ndjson', ?, ?, ?, ?)",
                    (str(uuid.uuid4()), f"{resource_type}.ndjson", hashlib.sha3_512(content).hexdigest(), content,
                     datetime.now(UTC).strftime("%Y-%m-%d"), self.now()))
            outputs.append({"type": resource_type, "url": f"{self.fhir_base}/Binary/{cursor.lastrowid}"})
        with self.db.tx() as db:
            db.execute("INSERT INTO export_jobs (job, request, transaction_time, outputs, polls_left)"
                       " VALUES (?, ?, ?, ?, ?)",
                       (job, f"{self.fhir_base}/$export?{urlencode(request.query)}", F.instant(self.now()),
                        json.dumps(outputs), self.export_pending_polls))
        return Response(202, b"", {"Content-Location": f"{self.fhir_base}/$bulkdata-status?job={job}"})

    def _export_status(self, request: Request) -> Response:
        """``GET|DELETE /$bulkdata-status?job=`` (§3.1): 200 with output[].url = FHIR/Binary/<doc id> (§3.4).
        OpenEMR's export is synchronous, so 202 happens only when a test asks (export_pending_polls)."""
        job = request.arg("job")
        with self.db.tx() as db:
            row = db.execute("SELECT * FROM export_jobs WHERE job = ?", (job,)).fetchone()
            if row is None:
                return resource_error(404, "job not found")
            if request.method == "DELETE":
                db.execute("DELETE FROM export_jobs WHERE job = ?", (job,))
                return Response.empty(202)
            if row["polls_left"] > 0:
                db.execute("UPDATE export_jobs SET polls_left = polls_left - 1 WHERE job = ?", (job,))
                return Response(202, b"", {"X-Progress": "in progress", "Retry-After": self.export_retry_after})
        return Response.json(200, {"transactionTime": row["transaction_time"], "request": row["request"],
                                   "requiresAccessToken": True, "output": json.loads(row["outputs"]), "error": []})

    def _binary(self, ident: str) -> Response:
        """``GET /Binary/{uuid or numeric doc id}`` returns the raw bytes (§3.1)."""
        with self.db.tx() as db:
            if ident.isdigit():
                row = db.execute("SELECT * FROM documents WHERE id = ?", (int(ident),)).fetchone()
            else:
                row = db.execute("SELECT * FROM documents WHERE uuid = ?", (ident,)).fetchone()
        if row is None:
            return resource_error(404, "Resource not found")
        return Response(200, bytes(row["content"]), {"Content-Type": row["mimetype"]})

    # =================================================================== standard API (§4)

    def _api(self, request: Request, route: str) -> Response:
        caller, error = self._caller(request)
        if error is not None:
            return error
        assert caller is not None
        # /api needs a users-role token carrying api:oemr; system tokens get 403 (§2.8, §7.7, §10).
        if caller.role != "users" or "api:oemr" not in caller.scopes:
            return resource_error(403, "Forbidden")
        parts = [p for p in route.split("/") if p]
        # The scope resource is the last literal path segment (§2.7).
        if len(parts) == 2 and parts[0] == "patient" and request.method == "GET":
            # GET /api/patient/:puuid: the row, pid included, in the newer envelope (§4.1, §4.2).
            if not grants(caller.scopes, "user", "patient", "r"):
                return resource_error(401, "Unauthorized")
            with self.db.tx() as db:
                row = db.execute("SELECT * FROM patients WHERE uuid = ?", (parts[1],)).fetchone()
            if row is None:
                return Response.json(404, {"validationErrors": [], "internalErrors": [], "data": [], "links": []})
            data = {k: row[k] for k in ("pid", "uuid", "pubpid", "fname", "lname", "mname", "sex")}
            data["DOB"] = row["dob"]
            data["pid"] = str(row["pid"])
            return Response.json(200, {"validationErrors": [], "internalErrors": [], "data": data, "links": []})
        if len(parts) >= 3 and parts[0] == "patient" and parts[2] == "document":
            pid = parts[1]
            if len(parts) == 3 and request.method == "POST":
                need = "c"
            elif len(parts) == 3 and request.method == "GET":
                need = "s"
            elif len(parts) == 4 and request.method == "GET":
                need = "r"
            else:
                return resource_error(404, "not found")
            if not grants(caller.scopes, "user", "document", need):
                return resource_error(401, "Unauthorized")
            if not pid.isdigit():
                return Response.empty(404)
            if need == "c":
                return self._document_upload(request, int(pid))
            if need == "s":
                return self._document_list(request, int(pid))
            return self._document_get(int(pid), parts[3])
        return resource_error(404, "not found")

    def _category(self, path: str | None) -> int | None:
        """isValidPath / getLastIdOfPath (§4.4): the first segment is discarded; each segment is
        compared with the name lower-cased without spaces, underscores stripped from ours; each
        segment after the first must be a child of the previous one."""
        if not path:
            return None
        segments = [s.replace("_", "").lower() for s in path.split("/")[1:]]
        if not segments or any(not s or " " in s for s in segments):
            return None
        with self.db.tx() as db:
            rows = db.execute("SELECT id, name, parent FROM categories").fetchall()
        by_name: dict[str, list[Any]] = {}
        for row in rows:
            by_name.setdefault(row["name"].lower().replace(" ", ""), []).append(row)
        previous: int | None = None
        for index, segment in enumerate(segments):
            candidates = by_name.get(segment, [])
            if index > 0:
                candidates = [c for c in candidates if c["parent"] == previous]
            if not candidates:
                return None
            previous = candidates[0]["id"]
        return previous

    def _document_upload(self, request: Request, pid: int) -> Response:
        category = self._category(request.arg("path"))
        part = _multipart_file(request, "document")  # the only field read (§4.4)
        # Every failure is 404 with an empty body: bad category, empty file, blocked MIME type (§4.4).
        if category is None or part is None or not part[1]:
            return Response.empty(404)
        filename, content = part
        mimetype = _sniff(content)
        if mimetype in ("application/x-dosexec", "application/x-msdownload"):
            return Response.empty(404)
        eid = request.arg("eid")
        # Before upstream PR #13409 an unknown pid stored an orphan row (§4.4).
        with self.db.tx() as db:
            db.execute("INSERT INTO documents (uuid, pid, category_id, filename, mimetype, hash, content, docdate,"
                       " eid, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (str(uuid.uuid4()), pid, category, filename, mimetype, hashlib.sha3_512(content).hexdigest(),
                        content, datetime.now(UTC).strftime("%Y-%m-%d"), int(eid) if eid and eid.isdigit() else None,
                        self.now()))
        return Response.json(200, True)  # success is 200 with the body `true`, no id (§4.4)

    def _document_list(self, request: Request, pid: int) -> Response:
        category = self._category(request.arg("path"))
        if category is None:
            return Response.empty(404)
        with self.db.tx() as db:
            rows = db.execute("SELECT filename, hash, id, mimetype, docdate FROM documents WHERE pid = ? AND"
                              " category_id = ? ORDER BY id", (pid, category)).fetchall()
        if not rows:
            return Response.empty(404)  # an empty category is a 404 with an empty body too (§4.4)
        # A bare array (no envelope); ids come back as strings, as PHP's DB layer gives them.
        return Response.json(200, [{"filename": r["filename"], "hash": r["hash"], "id": str(r["id"]),
                                    "mimetype": r["mimetype"], "docdate": r["docdate"]} for r in rows])

    def _document_get(self, pid: int, did: str) -> Response:
        with self.db.tx() as db:
            row = db.execute("SELECT * FROM documents WHERE pid = ? AND id = ?",
                             (pid, int(did) if did.isdigit() else -1)).fetchone()
        if row is None:
            return Response.empty(400)  # not found: 400 with an empty body (§4.4)
        # Content-Disposition with an unquoted filename (§10).
        return Response(200, bytes(row["content"]), {"Content-Type": row["mimetype"],
                                                     "Content-Disposition": f"attachment; filename={row['filename']}"})


# --------------------------------------------------------------------------- helpers


def _prefix(value: str) -> tuple[str, str]:
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "eq": "="}
    if value[:2] in ops and not value[:2].isdigit():
        return ops[value[:2]], value[2:]
    return "=", value


def _matches(item: tuple[dict[str, Any], float], name: str, value: str) -> bool:
    resource, updated = item
    if name == "_id":
        return resource.get("id") == value
    if name == "patient":
        return resource.get("_patient") == value.split("/")[-1]
    if name == "_lastUpdated":
        op, stamp = _prefix(value)
        target = F.parse_instant(stamp)
        return {"=": updated == target, ">=": updated >= target, ">": updated > target, "<=": updated <= target,
                "<": updated < target}[op]
    if name in ("code", "category"):
        system, _, code = value.rpartition("|")
        field_value = resource.get(name)
        concepts = field_value if isinstance(field_value, list) else [field_value] if field_value else []
        for concept in concepts:
            for coding in (concept or {}).get("coding") or []:
                if coding.get("code") == code and (not system or coding.get("system") == system):
                    return True
        return False
    return True  # other parameters: not emulated, ignored


def _multipart_file(request: Request, field_name: str) -> tuple[str, bytes] | None:
    content_type = request.header("content-type")
    if not content_type.startswith("multipart/form-data"):
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == field_name:
            payload = part.get_payload(decode=True)
            return str(part.get_filename() or "upload"), payload if isinstance(payload, bytes) else b""
    return None


def _sniff(content: bytes) -> str:
    """What libmagic's mime_content_type() would say, for the types tests use (§4.4)."""
    if content.startswith(b"%PDF"):
        return "application/pdf"
    if len(content) > 132 and content[128:132] == b"DICM":
        return "application/dicom"
    if content.startswith(b"\x89PNG"):
        return "image/png"
    if content.startswith(b"MZ"):
        return "application/x-dosexec"
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"

