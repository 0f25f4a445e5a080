"""PostgreSQL topologies started for real on loopback ports: PgBouncer, a failover pair.

Each process runs as the ``postgres`` OS user when the tests run as root (PostgreSQL and
PgBouncer refuse root), in a temporary directory, on a free port; it is stopped and the
directory removed afterwards. ``.ci/services`` installs PgBouncer on a fresh machine;
PostgreSQL's server binaries come from Debian's ``postgresql-<major>`` package.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

__all__ = ["Cluster", "PgBouncer", "failover_pair", "pgbouncer"]

#: The user every topology runs as, and connects as (trust authentication on loopback).
DB_USER = "postgres"


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them out of PATH, per major version."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if not candidates:
        pytest.fail(f"{name} not found: install postgresql (see .ci/services)", pytrace=False)
    return candidates[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_db_user() -> dict[str, Any]:
    """Popen arguments that drop root to the database user."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(DB_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, check=check, timeout=120, **_as_db_user()
    )


def scratch_dir(prefix: str) -> Path:
    """A temporary directory the database user owns."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(DB_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def wait_until(ready: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {seconds:g} s")
        time.sleep(0.05)


def _answers(url: URL) -> bool:
    engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


# -- a PostgreSQL cluster -------------------------------------------------------------------


@dataclass
class Cluster:
    """One PostgreSQL cluster in a temporary directory."""

    name: str
    data: Path
    port: int

    @property
    def url(self) -> URL:
        return make_url(f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/postgres")

    def start(self) -> None:
        run(_pg_bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
            "-l", str(self.data / "server.log"))

    def stop(self, mode: str = "fast") -> None:
        run(_pg_bin("pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data), check=False)

    def promote(self) -> None:
        run(_pg_bin("pg_ctl"), "promote", "-w", "-D", str(self.data))

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def configure(self, **settings: str | int) -> None:
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = '{value}'\n")


def _settings(port: int, directory: Path) -> dict[str, str | int]:
    return {
        "port": port,
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(directory),
        "fsync": "off",  # a test cluster: durability across power loss is not the point
        "max_connections": 100,
        "shared_buffers": "32MB",
    }


def init_cluster(name: str, root: Path) -> Cluster:
    data = root / name
    port = free_port()
    run(_pg_bin("initdb"), "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8",
        "--no-instructions")
    cluster = Cluster(name, data, port)
    cluster.configure(**_settings(port, root))
    return cluster


def standby_of(primary: Cluster, name: str, root: Path) -> Cluster:
    """A streaming standby of ``primary`` (``pg_basebackup -R``), named ``name`` for
    ``synchronous_standby_names``."""
    data = root / name
    port = free_port()
    run(_pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", DB_USER,
        "-D", str(data), "-X", "stream", "-R", "-c", "fast",
        "-d", f"application_name={name}")
    cluster = Cluster(name, data, port)
    # Promoted, it stands alone: its commits must not wait for a standby of its own (the
    # primary's setting came along in the backup).
    cluster.configure(**_settings(port, root), synchronous_standby_names="")
    return cluster


# -- PgBouncer ------------------------------------------------------------------------------


@dataclass
class PgBouncer:
    """PgBouncer on a loopback port in front of a PostgreSQL server."""

    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    def url(self, database: str) -> URL:
        return make_url(f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{database}")


@contextlib.contextmanager
def pgbouncer(server: URL, *, pool_mode: str = "transaction") -> Iterator[PgBouncer]:
    """PgBouncer (Debian's, default settings but ``pool_mode``) in front of ``server``."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        pytest.fail("pgbouncer not found: install it (see .ci/services)", pytrace=False)
    directory = scratch_dir("wfp-pgbouncer-")
    port = free_port()
    (directory / "userlist.txt").write_text(f'"{DB_USER}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.host} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        f"unix_socket_dir = {directory}\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        f"pool_mode = {pool_mode}\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
    )
    process = subprocess.Popen(
        [binary, "-q", str(directory / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **_as_db_user(),
    )
    bouncer = PgBouncer(port, process, directory)
    try:
        probe = bouncer.url(server.database or "postgres")
        wait_until(lambda: process.poll() is not None or _answers(probe), "PgBouncer")
        if process.poll() is not None:
            log = (directory / "pgbouncer.log").read_text(errors="replace")
            pytest.fail(f"PgBouncer exited at start:\n{log}", pytrace=False)
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


# -- a failover pair --------------------------------------------------------------------------


@dataclass
class FailoverPair:
    """A primary and its synchronous streaming standby, and the multi-host URL of both."""

    primary: Cluster
    standby: Cluster

    def url(self, database: str = "postgres", **query: str) -> URL:
        hosts = [f"127.0.0.1:{c.port}" for c in (self.primary, self.standby)]
        return URL.create(
            "postgresql+psycopg",
            username=DB_USER,
            database=database,
            query={"host": hosts, "target_session_attrs": "read-write", **query},
        )

    def replicating(self) -> bool:
        """Whether the standby streams and commits wait for it."""
        engine = sa.create_engine(self.primary.url, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                state = conn.execute(
                    sa.text("SELECT sync_state FROM pg_stat_replication WHERE application_name"
                            " = :name"), {"name": self.standby.name}
                ).scalar()
            return state == "sync"
        finally:
            engine.dispose()


@contextlib.contextmanager
def failover_pair() -> Iterator[FailoverPair]:
    """Two fresh clusters: a primary, and a standby made by ``pg_basebackup`` that commits
    wait for (``synchronous_standby_names``). Both are stopped and removed afterwards."""
    root = scratch_dir("wfp-failover-")
    clusters: list[Cluster] = []
    try:
        primary = init_cluster("primary", root)
        primary.configure(synchronous_standby_names="standby", wal_keep_size="64MB")
        clusters.append(primary)
        primary.start()
        standby = standby_of(primary, "standby", root)
        clusters.append(standby)
        standby.start()
        pair = FailoverPair(primary, standby)
        wait_until(pair.replicating, "synchronous replication")
        yield pair
    finally:
        for cluster in reversed(clusters):
            if cluster.running():
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
