"""Hub configuration: one YAML file plus environment overrides.

Precedence (highest first): environment variables ``MEORING_<SECTION>__<KEY>``
(e.g. ``MEORING_FHIR__BASE_URL``), the YAML file, the embedded defaults. The YAML file
is the one given with ``--config`` or in ``MEORING_CONFIG``; without one the embedded
defaults run everything locally (SQLite store, in-process worker, local HAPI FHIR).

An invalid configuration raises :class:`hub.errors.ConfigError` naming the key; values
are never echoed because some of them are secrets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hub.errors import ConfigError

DEFAULT_DATA_DIR = Path(os.environ.get("MEORING_HOME", Path.home() / ".local" / "share" / "meoring"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Section):
    """The durable store (inbox, outbox, dead letters, cursors, cache)."""

    url: str = Field(
        default_factory=lambda: f"sqlite:///{DEFAULT_DATA_DIR / 'meoring.db'}",
        description="SQLAlchemy URL: sqlite:///path (embedded) or mysql+pymysql://user:pw@host/db",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL fsyncs every commit (durable against power loss); NORMAL only at checkpoints"
    )
    group_commit_max_batch: int = Field(256, ge=1, le=10_000, description="Most inbox writes per commit")
    group_commit_max_wait_ms: float = Field(
        0.0, ge=0, le=1000,
        description="How long a lone write waits for company (0: natural batching — writes that arrive"
        " during a commit share the next one)",
    )

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "mysql+pymysql://", "mariadb+pymysql://")):
            raise ValueError("must start with sqlite://, mysql+pymysql:// or mariadb+pymysql://")
        return value


class FhirSettings(_Section):
    """The FHIR server the hub delivers to (HAPI FHIR)."""

    base_url: str = Field("http://127.0.0.1:8080/fhir", description="FHIR R4 base URL")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Read timeout per request")
    connect_timeout_s: float = Field(5.0, gt=0, le=120)
    max_attempts: int = Field(4, ge=1, le=20, description="Attempts per request inside one delivery")
    validate_outgoing: bool = Field(True, description="Validate resources against R4 before sending")
    bearer_token: SecretStr | None = Field(None, description="Static bearer token, if the server needs one")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class PipelineSettings(_Section):
    """The worker loop that translates and delivers inbox messages."""

    max_attempts: int = Field(8, ge=1, le=100, description="Delivery attempts before a message is dead-lettered")
    backoff_base_s: float = Field(2.0, gt=0, le=3600)
    backoff_max_s: float = Field(600.0, gt=0, le=86_400)
    batch_size: int = Field(50, ge=1, le=5000, description="Messages claimed per round")
    lease_s: float = Field(
        60.0, gt=0, le=3600, description="How long a claim lasts before another worker may retake it"
    )
    poll_interval_s: float = Field(0.5, gt=0, le=60, description="Idle sleep between rounds")
    workers: int = Field(1, ge=1, le=64, description="Delivery threads in one worker process")


class HttpSettings(_Section):
    """The hub's HTTP app: health, metrics, CDS Hooks."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)


class MllpSettings(_Section):
    """The HL7 v2 MLLP listener."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(2575, ge=1, le=65535)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    idle_timeout_s: float = Field(300.0, gt=0)
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    ack_after: Literal["stored", "translated"] = Field(
        "stored",
        description="AA once the raw message is stored (fast; translation failures become dead letters), or only"
        " once it also translates (AE with the reason; costs the translation CPU at receipt). Also used by"
        " `meoring ingest` for HL7 v2 files",
    )


class RedisSettings(_Section):
    url: str | None = Field(None, description="redis://host:port/db for the AI job queue; unset = in-process jobs")


class OrthancSettings(_Section):
    url: str | None = Field(None, description="Orthanc REST base URL, e.g. http://orthanc:8042")


_BACKEND_SCOPES = (
    "system/Patient.rs system/Encounter.rs system/Observation.rs system/Condition.rs"
    " system/AllergyIntolerance.rs system/MedicationRequest.rs system/ServiceRequest.rs"
    " system/DiagnosticReport.rs system/DocumentReference.rs system/Practitioner.rs system/Binary.read"
    " system/Patient.$export system/*.$export system/*.$bulkdata-status"
)
_USER_SCOPES = (
    "openid offline_access api:oemr user/Patient.write user/patient.rs user/document.crs"
)


class OpenEmrSettings(_Section):
    """OpenEMR, the source of truth: its address, the hub's two OAuth2 clients, cache and sync.

    What ``meoring openemr register`` obtains (client ids and secrets) and the hub's key
    pairs live in ``state_dir``; tokens live in the store. See ``openemr-config/README.md``.
    """

    base_url: str | None = Field(None, description="OpenEMR base URL, e.g. https://openemr.example.org")
    site: str = Field("default", description="OpenEMR site id used in API paths")
    state_dir: Path | None = Field(
        None, description="Where the registered clients and the hub's key pairs are kept (default: <data_dir>/openemr)"
    )
    backend_scopes: str = Field(_BACKEND_SCOPES, description="Scopes registered for the backend-services client")
    user_scopes: str = Field(_USER_SCOPES, description="Scopes registered for the user-delegated client")
    redirect_host: str = Field("127.0.0.1", description="Loopback address `meoring openemr login` listens on")
    redirect_port: int = Field(8765, ge=1, le=65535, description="Loopback port of the registered redirect URI")
    jwks_uri: str | None = Field(
        None, description="Public URL of the hub's JWKS; unset: the JWKS is sent inline at registration"
    )
    backend_client_id: str | None = Field(None, description="Use this backend client instead of the registered one")
    user_client_id: str | None = Field(None, description="Use this user-delegated client instead of the registered one")
    user_client_secret: SecretStr | None = Field(None, description="Secret of user_client_id")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Read timeout per OpenEMR request")
    connect_timeout_s: float = Field(5.0, gt=0, le=120)
    token_renew_margin_s: float = Field(
        60.0, ge=0, le=3000, description="Renew an access token this long before it expires"
    )
    cache_ttl_s: float = Field(300.0, ge=0, le=86_400, description="How long a read from OpenEMR is served from cache")
    page_size: int = Field(200, ge=1, le=200, description="Patients per page when paging a Patient search")
    unknown_patient_policy: Literal["create", "reject"] = Field(
        "reject", description="An ADT patient whose MRN OpenEMR does not know: create it in OpenEMR first, or reject"
    )
    mrn_system: str = Field("urn:meoring:mrn", description="Identifier system of the MRN (OpenEMR pubpid) in HAPI")
    uuid_system: str = Field(
        "urn:meoring:openemr:uuid", description="Identifier system of OpenEMR's uuid on resources written to HAPI"
    )
    document_id_system: str = Field(
        "urn:meoring:openemr:document", description="Identifier system of OpenEMR document ids (pid/id) in HAPI"
    )
    export_poll_interval_s: float = Field(2.0, gt=0, le=600, description="Wait between bulk $export status polls")
    export_timeout_s: float = Field(1800.0, gt=0, le=86_400, description="Give up on a bulk $export after this long")

    @field_validator("base_url", "jwks_uri")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("site")
    @classmethod
    def _site_id(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError("must be a site id: letters, digits, - and _")
        return value


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(True, alias="json", description="Structured JSON lines (false: human-readable)")
    identifier_salt: SecretStr = Field(
        SecretStr("meoring-default-salt"),
        description="Secret salt for hashing identifiers in logs; set it per site "
        "(env MEORING_LOGGING__IDENTIFIER_SALT)",
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class HubSettings(BaseSettings):
    """All of the hub's settings. Build once in the CLI and pass down."""

    model_config = SettingsConfigDict(env_prefix="MEORING_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where embedded state lives (SQLite, keys, HAPI data)")
    store: StoreSettings = Field(default_factory=StoreSettings)
    fhir: FhirSettings = Field(default_factory=FhirSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    mllp: MllpSettings = Field(default_factory=MllpSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    orthanc: OrthancSettings = Field(default_factory=OrthancSettings)
    openemr: OpenEmrSettings = Field(default_factory=OpenEmrSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must override it.
        return (env_settings, init_settings)


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"])
    return f"{key}: {error['msg']}"


def load_settings(path: str | Path | None = None) -> HubSettings:
    """Load settings from ``path`` (or ``$MEORING_CONFIG``), environment overrides applied.

    Raises :class:`ConfigError` naming the first offending key.
    """
    path = path or os.environ.get("MEORING_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {file}{where} is not valid YAML") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file} must hold a mapping of sections at top level")
        data = loaded
    try:
        return HubSettings(**data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        first = errors[0]
        key = ".".join(str(part) for part in first["loc"])
        more = f" ({len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"invalid configuration: {_describe(first)}{more}", key=key) from None
