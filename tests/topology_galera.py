"""A three-node MariaDB Galera cluster on loopback ports, started for the test session.

Each node is a ``mariadbd`` of its own with a datadir in a temporary directory: the first
is made by ``mariadb-install-db`` and bootstraps the cluster (``--wsrep-new-cluster``); the
other two start empty and receive it by state transfer (rsync). Readiness is polled
(``wsrep_cluster_size`` = 3 and every node Synced), never waited for with fixed sleeps.
The main MariaDB server on 3306 is never touched. ``.ci/services`` installs ``galera-4``
and ``rsync`` on a machine that lacks them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest
from sqlalchemy.engine import URL

PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
NODES = 3
#: How long the cluster may take to come up, or a node to stop, before the tests fail.
START_SECONDS = 120.0
STOP_SECONDS = 30.0
POLL_SECONDS = 0.05


@dataclass
class Node:
    index: int
    base: Path
    sql_port: int
    group_port: int
    ist_port: int
    sst_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def datadir(self) -> Path:
        return self.base / self.name

    @property
    def config(self) -> Path:
        return self.base / f"{self.name}.cnf"

    @property
    def error_log(self) -> Path:
        return self.base / f"{self.name}.err"

    def url(self, database: str | None = None) -> URL:
        return URL.create(
            "mysql+pymysql", "root", host="127.0.0.1", port=self.sql_port, database=database
        )

    def connect(self, timeout: float = 2.0) -> pymysql.Connection[pymysql.cursors.Cursor]:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.sql_port,
            user="root",
            connect_timeout=max(1, round(timeout)),
            autocommit=True,
        )

    def status(self) -> dict[str, str]:
        """The node's ``wsrep_%`` status; empty while it does not answer."""
        try:
            conn = self.connect()
        except pymysql.err.OperationalError:
            return {}
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW STATUS LIKE 'wsrep_%'")
                return {str(name): str(value) for name, value in cursor.fetchall()}
        except pymysql.err.OperationalError:
            return {}
        finally:
            conn.close()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.error_log.read_text(errors="replace")
        except OSError:
            return "(no error log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class GaleraCluster:
    base: Path
    nodes: list[Node]
    #: Seconds from the first mariadbd's start until all three nodes were Synced.
    start_seconds: float = 0.0
    install_seconds: float = 0.0

    def url(self, node: int, database: str | None = None) -> URL:
        return self.nodes[node].url(database)

    def stop(self) -> None:
        """Stop every node (the joiners first, the bootstrap node last), then clean up."""
        for node in reversed(self.nodes):
            _stop(node)
        shutil.rmtree(self.base, ignore_errors=True)


def _free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (bound once, then released for mariadbd)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _write_config(node: Node, members: list[Node], run_as: str | None) -> None:
    peers = ",".join(f"127.0.0.1:{member.group_port}" for member in members)
    provider_options = ";".join(
        [
            f"gmcast.listen_addr=tcp://127.0.0.1:{node.group_port}",
            f"ist.recv_addr=127.0.0.1:{node.ist_port}",
            "gcache.size=32M",
        ]
    )
    lines = [
        "[mysqld]",
        f"datadir={node.datadir}",
        f"socket={node.base / (node.name + '.sock')}",
        f"pid-file={node.base / (node.name + '.pid')}",
        f"log-error={node.error_log}",
        f"port={node.sql_port}",
        "bind-address=127.0.0.1",
        "skip-name-resolve",
        *([f"user={run_as}"] if run_as else []),
        # Small and fast: the cluster lives for one test session.
        "innodb-buffer-pool-size=32M",
        "innodb-log-file-size=8M",
        "innodb-flush-log-at-trx-commit=0",
        # What Galera requires of every server.
        "binlog-format=ROW",
        "default-storage-engine=InnoDB",
        "innodb-autoinc-lock-mode=2",
        # Refuse a table without a primary key, or a write outside InnoDB, instead of
        # replicating it badly: the library's tables must pass this.
        "wsrep-mode=REQUIRED_PRIMARY_KEY,STRICT_REPLICATION",
        "wsrep-on=ON",
        f"wsrep-provider={PROVIDER}",
        "wsrep-cluster-name=wfp-test",
        f"wsrep-cluster-address=gcomm://{peers}",
        f"wsrep-node-name={node.name}",
        f"wsrep-node-address=127.0.0.1:{node.group_port}",
        f"wsrep-provider-options={provider_options}",
        "wsrep-sst-method=rsync",
        f"wsrep-sst-receive-address=127.0.0.1:{node.sst_port}",
    ]
    node.config.write_text("\n".join(lines) + "\n")


def _start(node: Node, *extra: str) -> None:
    with open(node.base / f"{node.name}.out", "wb") as out:
        node.process = subprocess.Popen(
            ["mariadbd", f"--defaults-file={node.config}", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of pytest must not kill it half-way
        )


def _stop(node: Node) -> None:
    process = node.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_SECONDS)


def _wait_synced(nodes: list[Node], size: int, deadline: float) -> None:
    """Poll until every one of ``nodes`` is Synced in a cluster of ``size`` nodes."""
    waiting = list(nodes)
    while waiting:
        for node in list(waiting):
            assert node.process is not None
            if node.process.poll() is not None:
                raise RuntimeError(
                    f"Galera node {node.name} exited with {node.process.returncode}:\n"
                    f"{node.log_tail()}"
                )
            status = node.status()
            if (
                status.get("wsrep_local_state_comment") == "Synced"
                and status.get("wsrep_cluster_size") == str(size)
                and status.get("wsrep_ready") == "ON"
            ):
                waiting.remove(node)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(node.name for node in waiting)
            raise RuntimeError(
                f"Galera node(s) {names} not Synced after {START_SECONDS:g} s:\n"
                + "\n".join(node.log_tail() for node in waiting)
            )
        if waiting:
            time.sleep(POLL_SECONDS)  # polling interval, not a wait for an outcome


def start_cluster() -> GaleraCluster:
    """Three Synced nodes; on failure, whatever started is stopped again."""
    for tool in ("mariadbd", "mariadb-install-db", "rsync"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: run .ci/services (it installs it)")
    if not PROVIDER.exists():
        raise RuntimeError(f"{PROVIDER} is missing: run .ci/services (it installs galera-4)")
    # A short path: a UNIX socket's path must fit in 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="wfp-galera-"))
    ports = _free_ports(4 * NODES)
    nodes = [
        Node(i, base, sql_port=sql, group_port=group, ist_port=ist, sst_port=sst)
        for i, (sql, group, ist, sst) in enumerate(zip(*[iter(ports)] * 4, strict=True))
    ]
    cluster = GaleraCluster(base, nodes)
    # mariadbd refuses to run as root; the rsync daemon of a state transfer run by root
    # would drop to "nobody" and fail to write the datadir. Run the nodes as mysql then.
    run_as = "mysql" if os.geteuid() == 0 else None
    try:
        for node in nodes:
            node.datadir.mkdir()
            # A joiner lists the bootstrap node only: listing peers that are not up yet
            # makes the group's first view wait for them.
            _write_config(node, nodes if node.index == 0 else nodes[:1], run_as)
        if run_as is not None:
            user = pwd.getpwnam(run_as)
            base.chmod(0o755)
            for path in [base, *base.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
        started = time.monotonic()
        subprocess.run(
            [
                "mariadb-install-db",
                f"--defaults-file={nodes[0].config}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--wsrep-on=OFF",
            ],
            check=True,
            capture_output=True,
        )
        cluster.install_seconds = time.monotonic() - started
        started = time.monotonic()
        deadline = started + START_SECONDS
        _start(nodes[0], "--wsrep-new-cluster")
        _wait_synced(nodes[:1], 1, deadline)
        # One at a time: a node asking to join while another receives its state
        # transfer waits seconds for the group's next view.
        for joined, node in enumerate(nodes[1:], start=2):
            _start(node)
            _wait_synced(nodes[:joined], joined, deadline)
        cluster.start_seconds = time.monotonic() - started
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster() -> Iterator[GaleraCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def galera() -> Iterator[GaleraCluster]:
    """The three-node cluster, for the whole test session."""
    try:
        cluster = start_cluster()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.fail(
            f"the Galera cluster did not start: {exc}\n{detail.decode(errors='replace')}",
            pytrace=False,
        )
    try:
        yield cluster
    finally:
        cluster.stop()
