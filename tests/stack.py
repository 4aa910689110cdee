"""The real servers the tests talk to: MariaDB, Redis and HAPI FHIR, started on free loopback ports.

Each server runs from the machine's own binaries (Debian's ``mariadb-server`` and
``redis-server``; HAPI built from Maven Central by ``hapi-config/build-hapi.sh``) with its
data in a temporary directory, and is stopped when the test session ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
        if found:
            return found
    raise RuntimeError(f"none of {names} is installed (apt-get install mariadb-server redis-server)")


@dataclass
class MariaDbServer:
    """A private mariadbd with a ``hub`` user; each test gets a fresh database."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    user: str = "hub"
    password: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def socket_path(self) -> Path:
        return self.root / "mysqld.sock"

    def start(self) -> MariaDbServer:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        install = subprocess.run(
            [_binary("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            capture_output=True, check=False,
        )
        if install.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {install.stderr.decode()[-500:]}")
        log = open(self.root / "mariadbd.log", "wb")
        self.process = subprocess.Popen(
            [_binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={data}", f"--socket={self.socket_path}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin",
             "--innodb-buffer-pool-size=128M", "--innodb-flush-log-at-trx-commit=1",
             f"--pid-file={self.root / 'mariadbd.pid'}", "--max-connections=200"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 60, self.process)
        self.admin(
            f"CREATE USER '{self.user}'@'127.0.0.1' IDENTIFIED BY '{self.password}';"
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'127.0.0.1';"
        )
        return self

    def admin(self, sql: str) -> None:
        import pymysql

        connection = pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)
        try:
            with connection.cursor() as cursor:
                for statement in filter(None, (s.strip() for s in sql.split(";"))):
                    cursor.execute(statement)
        finally:
            connection.close()

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.admin(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        return f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class RedisServer:
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "redis.log", "wb")
        self.process = subprocess.Popen(
            [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 30, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@dataclass
class HapiServer:
    """HAPI FHIR JPA (R4) from ``hapi-config/run-hapi.sh``, H2 files under ``root``."""

    root: Path
    port: int = field(default_factory=free_port)
    pid: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self, timeout: float = 600) -> HapiServer:
        self.root.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["bash", str(REPO / "hapi-config" / "run-hapi.sh"), "--port", str(self.port),
             "--data-dir", str(self.root / "data"), "--timeout", str(int(timeout))],
            capture_output=True, timeout=timeout + 60, check=False,
            env={**os.environ, "HAPI_RUN_DIR": str(self.root / "run")},
        )
        if result.returncode != 0:
            raise RuntimeError(f"HAPI did not start: {result.stderr.decode()[-1500:]}")
        pid_file = self.root / "run" / f"hapi-{self.port}.pid"
        self.pid = int(pid_file.read_text().strip())
        httpx.get(f"{self.base_url}/metadata", timeout=60).raise_for_status()
        return self

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang, as with a stalled server."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.kill(self.pid, signal.SIGKILL)
