"""The docker compose stack's wiring, checked by parsing (no Docker engine needed).

``docker-compose.yml`` is read with PyYAML (anchors and ``<<`` merges resolved the way Compose
resolves them) and every hub process's environment is fed through the real settings loader, so a
renamed setting, a service renamed without its URLs, a floating image tag or a password typed into
the file fails here. If a ``docker`` CLI with the compose plugin is present, ``docker compose
config`` is run as an extra check; it is never required.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from hub.config import HubSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
HAPI_APPLICATION_YAML = ROOT / "hapi-config" / "application.yaml"
CONFIG_DOC = ROOT / "docs" / "configuration.md"

HUB_PROCESSES = ("hub-api", "hub-worker", "hub-mllp")
HUB_IMAGE_SERVICES = (*HUB_PROCESSES, "hub-migrate")
ONE_SHOTS = frozenset({"hub-migrate", "openemr-setup", "openemr-cert"})
EXPECTED_SERVICES = frozenset(
    {
        "openemr-db",
        "openemr",
        "openemr-cert",
        "openemr-setup",
        "hapi-db",
        "hapi",
        "orthanc",
        "redis",
        "hub-db",
        *HUB_IMAGE_SERVICES,
    }
)
# Where each stateful service keeps its data; each must be a named volume.
STATEFUL_PATHS = {
    "openemr-db": "/var/lib/mysql",
    "openemr": "/var/www/localhost/htdocs/openemr/sites",
    "hapi-db": "/var/lib/postgresql/data",
    "orthanc": "/var/lib/orthanc/db",
    "redis": "/data",
    "hub-db": "/var/lib/mysql",
    "hub-api": "/var/lib/meoring",
    "hub-worker": "/var/lib/meoring",
    "hub-mllp": "/var/lib/meoring",
}
# Environment variables that carry a secret (by name).
SECRET_NAME = re.compile(r"PASSWORD|PASS$|SECRET|SALT|TOKEN|_KEY$|_AUTH$", re.IGNORECASE)
# `${VAR}`, `${VAR:-default}`, `${VAR:?message}` ... but not the `$${...}` escape.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
REQUIRED_VARIABLE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}$")
# Environment variables the hub reads that are not settings fields.
MEORING_NON_SETTINGS = frozenset({"MEORING_CONFIG", "MEORING_HOME"})


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example line {number} is not NAME=value"
        assert name not in values, f".env.example lists {name} twice"
        values[name.strip()] = value.strip()
    return values


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose-style interpolation; an empty or missing required variable gets a stand-in."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = values.get(name, "")
        if operator in (":-", "-"):
            return value or argument
        if operator in (":?", "?"):
            return value or f"test{name.lower().replace('_', '')}"
        return value

    return VARIABLE.sub(substitute, text).replace("$$", "$")


def container_port(spec: Any) -> int:
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).rsplit(":", 1)[-1].split("/")[0])


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) for each volume entry, short or long syntax."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            yield str(entry.get("source", "")), str(entry["target"])
        else:
            parts = str(entry).split(":")
            if len(parts) == 1:
                yield "", parts[0]
            else:
                yield parts[0], parts[1]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def settings_env_names() -> dict[str, tuple[str, ...]]:
    """Every environment variable name HubSettings accepts -> its field path."""
    names: dict[str, tuple[str, ...]] = {}
    for section, field in HubSettings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for key, sub in annotation.model_fields.items():
                for spelling in {key, sub.alias or key}:
                    names[f"MEORING_{section}__{spelling}".upper()] = (section, key)
        else:
            names[f"MEORING_{section}".upper()] = (section,)
    return names


def hub_environment(services: dict[str, dict[str, Any]], env_example: dict[str, str]) -> dict[str, str]:
    """The interpolated environment of hub-api (all hub processes share one)."""
    return {key: interpolate(value, env_example) for key, value in environment(services["hub-api"]).items()}


# ---------------------------------------------------------------------------- services and images


def test_expected_services_present(services: dict[str, dict[str, Any]]) -> None:
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


def test_every_image_is_pinned_to_an_exact_tag(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image (built services must name theirs too)"
        assert "${" not in image, f"{name}: image tag must not come from a variable ({image})"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} floats on latest"
        if "build" in service:
            continue
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to an exact version"


def test_hub_processes_are_built_from_the_root_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name]["image"] for name in HUB_IMAGE_SERVICES}
    assert len(images) == 1, f"hub services use different images: {images}"
    for name in HUB_IMAGE_SERVICES:
        build = services[name].get("build")
        assert build, f"{name} is not built from this repository"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE, f"{name} builds another Dockerfile"


def test_hub_process_commands(services: dict[str, dict[str, Any]]) -> None:
    # The image's entrypoint is `meoring`, so the command is the subcommand.
    assert services["hub-api"]["command"] == ["serve", "--no-worker", "--no-mllp"]
    assert services["hub-worker"]["command"][0] == "worker"
    assert services["hub-mllp"]["command"] == ["mllp"]
    assert services["hub-migrate"]["command"] == ["db", "upgrade"]


def test_dockerfile_is_pinned_non_root_and_runs_meoring() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert base, "Dockerfile has no FROM"
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), (
        f"unpinned base image {base.group(1)}"
    )
    assert re.search(r'^ENTRYPOINT\s+\["meoring"\]', text, re.MULTILINE), 'ENTRYPOINT must be ["meoring"]'
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "Dockerfile never drops root"
    assert users[-1].split(":")[0] not in {"root", "0"}, "the image must run as a non-root user"
    assert re.search(r"pip install [^\n]*\.", text), "the package must be installed with pip install ."
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert ".env" in ignore, ".dockerignore must keep .env out of the build context"


# ---------------------------------------------------------------------------- health and ordering


def test_every_service_with_a_port_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if not service.get("ports"):
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), (
            f"{name} publishes ports but has no healthcheck"
        )


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOTS:
            assert service.get("restart") in {"no", None}, f"one-shot {name} must not restart"
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test"), f"{name} has no healthcheck"


def test_hub_api_healthcheck_probes_healthz(services: dict[str, dict[str, Any]]) -> None:
    probe = " ".join(services["hub-api"]["healthcheck"]["test"])
    assert "/healthz" in probe and ":8000" in probe


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), (
                    f"{name} waits for {target} to be healthy, which has no check"
                )
            if condition == "service_completed_successfully":
                assert target in ONE_SHOTS, f"{name} waits for {target} to finish, but it runs forever"
    for name in HUB_PROCESSES:
        assert depends_on(services[name]).get("hub-migrate") == "service_completed_successfully", (
            f"{name} must start only after `meoring db upgrade` succeeded"
        )
    assert depends_on(services["hub-migrate"]).get("hub-db") == "service_healthy"
    assert depends_on(services["hub-worker"]).get("hapi") == "service_healthy"
    # The MLLP listener ACKs once the message is in the store; it must not wait for HAPI.
    assert "hapi" not in depends_on(services["hub-mllp"])
    assert depends_on(services["hapi"]).get("hapi-db") == "service_healthy"
    assert depends_on(services["openemr"]).get("openemr-db") == "service_healthy"
    assert depends_on(services["openemr-setup"]).get("openemr") == "service_healthy"
    assert depends_on(services["openemr"]).get("openemr-cert") == "service_completed_successfully"


def test_hub_trusts_the_certificate_openemr_serves(services: dict[str, dict[str, Any]]) -> None:
    """openemr-cert writes OpenEMR's certificate into openemr's /etc/ssl and a CA bundle for the hub."""
    cert_mounts = {target: source for source, target in mounts(services["openemr-cert"])}
    openemr_mounts = {target: source for source, target in mounts(services["openemr"])}
    assert cert_mounts["/etc/ssl"] == openemr_mounts["/etc/ssl"], "openemr-cert must write openemr's /etc/ssl"
    assert services["openemr-cert"]["entrypoint"][-1] == "/openemr-config/make-cert.sh"
    assert (ROOT / "openemr-config" / "make-cert.sh").exists()
    bundle = environment(services["hub-api"])["SSL_CERT_FILE"]
    trust_volume = cert_mounts["/trust"]
    for name in HUB_IMAGE_SERVICES:
        hub_mounts = {target: source for source, target in mounts(services[name])}
        assert hub_mounts.get(str(Path(bundle).parent)) == trust_volume, f"{name} does not see the CA bundle"
        assert depends_on(services[name]).get("openemr-cert") == "service_completed_successfully", (
            f"{name} may start before its CA bundle exists"
        )
    readonly = [e for e in services["hub-api"]["volumes"] if str(e).startswith(f"{trust_volume}:")]
    assert readonly and str(readonly[0]).endswith(":ro"), "the hub must mount the CA bundle read-only"


# ---------------------------------------------------------------------------- wiring


def test_hub_fhir_base_url_points_at_the_hapi_service(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    url = urlsplit(hub_environment(services, env_example)["MEORING_FHIR__BASE_URL"])
    hapi_ports = {container_port(spec) for spec in services["hapi"].get("ports", [])}
    assert url.scheme == "http"
    assert url.hostname == "hapi", "MEORING_FHIR__BASE_URL must name the hapi service"
    assert url.port in hapi_ports, f"MEORING_FHIR__BASE_URL port {url.port} is not HAPI's container port"
    assert url.path == "/fhir"


def test_hub_store_url_points_at_the_hub_database(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    raw = environment(services["hub-api"])["MEORING_STORE__URL"]
    url = urlsplit(interpolate(raw, env_example))
    database = environment(services["hub-db"])
    assert url.scheme == "mysql+pymysql"
    assert url.hostname == "hub-db" and url.port == 3306
    assert url.path.lstrip("/") == database["MARIADB_DATABASE"]
    assert url.username == database["MARIADB_USER"]
    # Same secret on both sides: the variable in the URL is the one the database is created with.
    db_password_var = VARIABLE.search(database["MARIADB_PASSWORD"])
    assert db_password_var, "hub-db's MARIADB_PASSWORD must come from .env"
    url_password = urlsplit(VARIABLE.sub(lambda m: m.group(1), raw)).password
    assert url_password == db_password_var.group(1), "the store URL and hub-db use different passwords"


def test_hub_reaches_redis_orthanc_and_openemr_by_service_name(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    env = hub_environment(services, env_example)
    redis = urlsplit(env["MEORING_REDIS__URL"])
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
    orthanc = urlsplit(env["MEORING_ORTHANC__URL"])
    assert (orthanc.hostname, orthanc.port) == ("orthanc", 8042)
    assert 8042 in {container_port(spec) for spec in services["orthanc"]["ports"]}
    assert 4242 in {container_port(spec) for spec in services["orthanc"]["ports"]}
    orthanc_env = environment(services["orthanc"])
    assert orthanc_env.get("DICOM_WEB_PLUGIN_ENABLED") == "true"
    # The hub's OpenEMR URL, OpenEMR's site_addr_oath and the network alias are one name.
    openemr = urlsplit(env["MEORING_OPENEMR__BASE_URL"])
    aliases = services["openemr"]["networks"]["default"]["aliases"]
    assert openemr.scheme == "https"
    assert openemr.hostname in {interpolate(alias, env_example) for alias in aliases}
    site_addr = interpolate(environment(services["openemr-setup"])["OPENEMR_SITE_ADDR"], env_example)
    assert site_addr == env["MEORING_OPENEMR__BASE_URL"]


def test_hub_processes_listen_on_all_interfaces(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["hub-api"])
    assert env["MEORING_HTTP__HOST"] == "0.0.0.0"
    assert env["MEORING_MLLP__HOST"] == "0.0.0.0"
    assert {container_port(p) for p in services["hub-api"]["ports"]} == {int(env["MEORING_HTTP__PORT"])}
    assert {container_port(p) for p in services["hub-mllp"]["ports"]} == {int(env["MEORING_MLLP__PORT"])}
    for name in HUB_IMAGE_SERVICES:
        assert environment(services[name]) == env, f"{name} does not share the hub environment"


def test_hapi_uses_the_repository_application_yaml(services: dict[str, dict[str, Any]]) -> None:
    hapi = services["hapi"]
    sources = {target: source for source, target in mounts(hapi)}
    assert "/app/config/application.yaml" in sources, "hapi must mount application.yaml at /app/config"
    assert (ROOT / sources["/app/config/application.yaml"]).resolve() == HAPI_APPLICATION_YAML
    env = environment(hapi)
    assert env["SPRING_DATASOURCE_URL"].startswith("jdbc:postgresql://hapi-db:5432/")
    assert services["hapi-db"]["image"].startswith("postgres:")
    assert (
        env["SPRING_JPA_PROPERTIES_HIBERNATE_DIALECT"]
        == "ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect"
    )


def test_hapi_application_yaml_exists_in_the_repository() -> None:
    if not HAPI_APPLICATION_YAML.exists():
        pytest.skip("hapi-config/application.yaml is not written yet (another change delivers it)")
    assert isinstance(yaml.safe_load(HAPI_APPLICATION_YAML.read_text(encoding="utf-8")), dict)


def test_openemr_setup_applies_the_repository_sql(services: dict[str, dict[str, Any]]) -> None:
    setup = services["openemr-setup"]
    sources = {target: source for source, target in mounts(setup)}
    assert (ROOT / sources["/openemr-config"]).resolve() == ROOT / "openemr-config"
    assert setup["entrypoint"][-1] == "/openemr-config/apply.sh"
    assert (ROOT / "openemr-config" / "apply.sh").exists()
    sql = (ROOT / "openemr-config" / "globals.sql").read_text(encoding="utf-8")
    for name in ("rest_api", "rest_fhir_api", "rest_system_scopes_api", "site_addr_oath"):
        assert f"'{name}'" in sql, f"globals.sql does not set {name}"


def test_named_volumes_are_declared_and_hold_all_state(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in services.items():
        for source, target in mounts(service):
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} uses volume {source}, which is not declared"
                used.add(source)
            if name in STATEFUL_PATHS and target == STATEFUL_PATHS[name]:
                assert source and source in declared, f"{name} keeps {target} outside a named volume"
    for name, path in STATEFUL_PATHS.items():
        assert path in {target for _, target in mounts(services[name])}, f"{name} does not persist {path}"
    assert declared <= used, f"declared but unused volumes: {sorted(declared - used)}"


# ---------------------------------------------------------------------------- secrets and variables


def test_no_secret_is_written_into_the_compose_file(services: dict[str, dict[str, Any]]) -> None:
    def masked(value: str) -> str:
        # Required variables become FROMENV, anything else (defaults, literals) stays visible.
        return VARIABLE.sub(lambda m: "FROMENV" if m.group(2) == ":?" else "DEFAULTED", value)

    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_VARIABLE.match(value), f"{name}: {key} must be ${{VAR:?...}} from .env"
            for url in re.findall(r"[a-z][a-z0-9+.-]*://\S+", masked(value)):
                password = urlsplit(url).password
                assert password in (None, "FROMENV"), f"{name}: {key} has a password in its URL not from .env"
        users = environment(service).get("ORTHANC__REGISTERED_USERS")
        if users:
            for user, password in json.loads(masked(users)).items():
                assert password == "FROMENV", f"{name}: Orthanc user {user} has a password not from .env"
    literal = re.compile(r"(?i)(password|passwd|pwd)\s*[=:]\s*[^\s$]")
    for name, service in services.items():
        for text in strings({k: v for k, v in service.items() if k != "environment"}):
            assert not literal.search(text), f"{name}: a literal password in {text!r}"


def test_every_variable_is_in_env_example(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    text = "\n".join(strings(compose))  # parsed values only: comments do not count
    used = {match.group(1) for match in VARIABLE.finditer(text)}
    missing = used - set(env_example)
    assert not missing, f".env.example lacks {sorted(missing)}"
    unused = set(env_example) - used
    assert not unused, f".env.example lists variables docker-compose.yml never uses: {sorted(unused)}"
    # Only secrets are required (`:?`); they ship empty so nothing real is ever in the example.
    for match in VARIABLE.finditer(text):
        name, operator = match.group(1), match.group(2)
        if operator == ":?":
            assert env_example[name] == "", f".env.example must not carry a value for the secret {name}"
        elif SECRET_NAME.search(name):
            pytest.fail(f"secret {name} is used without :? (it would silently default)")


def test_meoring_variables_are_real_settings(
    services: dict[str, dict[str, Any]], env_example: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = settings_env_names()
    env = hub_environment(services, env_example)
    for key in env:
        if key.startswith("MEORING_"):
            assert key in known or key in MEORING_NON_SETTINGS, (
                f"{key} is not a setting in hub.config.HubSettings"
            )
    # And the values load: the real loader validates URLs, ports and enums.
    for key in list(os.environ):
        if key.startswith("MEORING_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("MEORING_"):
            monkeypatch.setenv(key, value)
    settings = load_settings(None)
    assert settings.fhir.base_url == "http://hapi:8080/fhir"
    assert settings.store.url.startswith("mysql+pymysql://hub:")
    assert settings.http.host == "0.0.0.0" and settings.http.port == 8000
    assert settings.mllp.host == "0.0.0.0" and settings.mllp.port == 2575
    assert settings.logging.json_format is True
    assert settings.logging.identifier_salt.get_secret_value() != "meoring-default-salt"


def test_configuration_doc_lists_every_setting() -> None:
    """docs/configuration.md must name the environment variable of every HubSettings field."""
    text = CONFIG_DOC.read_text(encoding="utf-8")
    for section, field in HubSettings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for key, sub in annotation.model_fields.items():
                name = f"MEORING_{section}__{sub.alias or key}".upper()
                assert name in text, f"docs/configuration.md does not document {name}"
        else:
            assert f"MEORING_{section}".upper() in text


def test_docker_compose_config_accepts_the_file(env_example: dict[str, str], tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here; the parse-based checks above stand in for it")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip("docker CLI has no compose plugin")
    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(
            f"{name}={value or 'test' + name.lower().replace('_', '')}\n"
            for name, value in env_example.items()
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [
            docker,
            "compose",
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
