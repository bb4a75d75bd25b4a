"""Throwaway PostgreSQL and MariaDB servers for the tests.

Each controller starts a real server from the locally installed binaries in its own
temporary directory on a free port, and can stop it cleanly, ``kill -9`` it and start
it again on the *same* port and data directory, so outage tests can take the database
away under load and bring it back. Durability settings stay at their defaults (fsync
on, InnoDB flushing its log at every commit): a crash test against these servers tests
what an operator's server would do.

The PostgreSQL and MariaDB controllers live next to their fixtures
(:mod:`tests.fixtures.postgres`, :mod:`tests.fixtures.mysql`). Where a server comes
from, first match wins (:func:`server_or_skip`):

1. ``GEARSTORE_TEST_POSTGRES_URL`` / ``GEARSTORE_TEST_MYSQL_URL`` name an existing
   server. Tests use it as is; stop/start/kill skip the calling test, since we may not
   take someone else's server down.
2. Local binaries (``/usr/lib/postgresql/*/bin``; ``mariadbd``/``mysqld`` with
   ``mariadb-install-db``/``mysql_install_db``).
3. testcontainers, if a Docker engine answers ``docker info``. Not restartable either.
4. Otherwise the test is skipped with one line saying what to install.

No stray servers: every local server is stopped by its fixture's teardown, by an
``atexit`` hook as a backstop, and by the kernel (``PR_SET_PDEATHSIG``) if the test
process itself dies without running either.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

TEST_DATABASE = "gearstore_test"
POSTGRES_URL_ENV = "GEARSTORE_TEST_POSTGRES_URL"
MYSQL_URL_ENV = "GEARSTORE_TEST_MYSQL_URL"

#: seconds a server may take to accept connections (crash recovery included)
READY_TIMEOUT = 60.0
#: seconds a clean shutdown may take before the server is killed instead
STOP_TIMEOUT = 60.0


class DbServerError(RuntimeError):
    """A throwaway server could not be set up, started or stopped."""


class DbServer:
    """A database server the tests can use; ``url`` names the ``gearstore_test`` db.

    ``controllable`` says whether :meth:`stop`, :meth:`kill` and :meth:`start` work;
    on a server we did not start they skip the calling test instead.
    """

    kind = "database"
    url: str
    controllable = False

    @property
    def running(self) -> bool:
        """Whether the server is up (always true for a server we do not control)."""
        return True

    def require_control(self) -> None:
        """Skip the calling test unless this server can be stopped and restarted."""
        if not self.controllable:
            pytest.skip(
                f"the {self.kind} server at {self.url} was not started by the tests, "
                "so they may not stop or restart it"
            )

    def start(self) -> None:
        """Start the server (again) on the same port and data directory."""
        self.require_control()

    def stop(self) -> None:
        """Shut the server down cleanly."""
        self.require_control()

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash or the OOM killer would."""
        self.require_control()

    def close(self) -> None:
        """Shut down and delete everything this controller created."""


class ExternalServer(DbServer):
    """A server named by an environment variable; used as is, never stopped."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process remains in process group ``pgid``.

    Scans /proc instead of ``killpg(pgid, 0)`` because orphaned children of a killed
    postmaster may linger as zombies when PID 1 does not reap, and zombies count for kill.
    """
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            raw = Path(stat).read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()  # the command name may hold spaces
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _set_parent_death_signal() -> None:
    # Runs in the child between fork and exec: the kernel SIGKILLs the server when the
    # thread that spawned it dies, so a test run killed with SIGKILL leaves no server.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 == PR_SET_PDEATHSIG


# Servers are spawned from one long-lived thread: PR_SET_PDEATHSIG fires when the
# spawning *thread* exits, so a server restarted from a test's short-lived thread
# would otherwise die with that thread.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dbserver-spawner")
_LIVE: set[LocalServer] = set()


@atexit.register
def _close_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


class LocalServer(DbServer):
    """A server process we started, in its own temporary directory and process group."""

    controllable = True
    #: signal that asks the server for a clean shutdown that does not wait for clients
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"gearstore-{self.kind.lower()}-"))
        self.datadir = self.tmpdir / "data"
        self.log_path = self.tmpdir / "server.log"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._initialized = False
        #: seconds the last :meth:`start` took (initialization included on the first)
        self.startup_seconds = 0.0
        _LIVE.add(self)

    # --- what each server type supplies ----------------------------------------------

    def _initialize(self) -> None:
        """Create the data directory (runs once, before the first start)."""
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _popen_user(self) -> dict[str, Any]:
        """Extra Popen arguments, e.g. to drop root privileges."""
        return {}

    def _try_connect(self) -> bool:
        """True once the server answers a query; False while it is still starting."""
        raise NotImplementedError

    def _create_database(self) -> None:
        raise NotImplementedError

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether our server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        began = time.monotonic()
        if not self.datadir.exists():
            self._initialize()
        with open(self.log_path, "ab") as log:
            self._proc = _SPAWNER.submit(
                subprocess.Popen,
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmpdir,
                start_new_session=True,  # own process group: kill() reaches every child
                preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
                **self._popen_user(),
            ).result()
        self._wait_ready()
        if not self._initialized:
            self._create_database()
            self._initialized = True
        self.startup_seconds = time.monotonic() - began

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise DbServerError(
                    f"{self.kind} server exited with status {self._proc.returncode} while "
                    f"starting on port {self.port}; last lines of {self.log_path}:\n"
                    + _log_tail(self.log_path)
                )
            if self._try_connect():
                return
            if time.monotonic() > deadline:
                self._kill_group()
                raise DbServerError(
                    f"{self.kind} server did not accept connections on 127.0.0.1:{self.port}"
                    f" within {READY_TIMEOUT:.0f}s; last lines of {self.log_path}:\n"
                    + _log_tail(self.log_path)
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Shut down cleanly (committed data flushed); kill if that takes too long."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(self.stop_signal)
            try:
                self._proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill_group()
                raise DbServerError(
                    f"{self.kind} server did not shut down within {STOP_TIMEOUT:.0f}s and "
                    f"was killed; last lines of {self.log_path}:\n" + _log_tail(self.log_path)
                ) from None
        self._wait_group_gone()

    def kill(self) -> None:
        """SIGKILL the server and all its processes, then wait until they are gone."""
        self._kill_group()

    def _kill_group(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self._wait_group_gone()

    def _wait_group_gone(self) -> None:
        # A restart must not race the old server's children (a new postmaster refuses
        # to start while backends still hold the old shared memory).
        assert self._proc is not None
        deadline = time.monotonic() + STOP_TIMEOUT
        while _group_alive(self._proc.pid):
            if time.monotonic() > deadline:
                raise DbServerError(f"{self.kind} server processes outlived the server")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            time.sleep(0.02)

    def close(self) -> None:
        """Stop the server (kill it if a clean stop fails) and delete its directory."""
        try:
            self.stop()
        except DbServerError:
            self._kill_group()
        finally:
            _LIVE.discard(self)
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def run_logged(args: Sequence[str], log: Path, what: str, **kwargs: Any) -> None:
    """Run a setup command (initdb, install-db) with its output appended to ``log``."""
    with open(log, "ab") as out:
        result = subprocess.run(
            list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            timeout=READY_TIMEOUT, check=False, **kwargs,
        )  # fmt: skip
    if result.returncode != 0:
        raise DbServerError(
            f"{what} failed with status {result.returncode}; last lines of {log}:\n"
            + _log_tail(log)
        )


# --- Docker (testcontainers) ---------------------------------------------------------------


def docker_available() -> bool:
    """Whether a Docker engine answers (the CLI alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return info.returncode == 0


class ContainerServer(DbServer):
    """A testcontainers-managed server. Its host port changes on restart, so outage
    tests skip on it like on an external server."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._container: Any
        if kind == "PostgreSQL":
            from testcontainers.postgres import PostgresContainer

            self._container = PostgresContainer(
                "postgres:16-alpine", username="gearstore", password="gearstore",
                dbname=TEST_DATABASE, driver=None,
            )  # fmt: skip
            scheme, internal_port = "postgresql", 5432
        else:
            from testcontainers.mysql import MySqlContainer

            self._container = MySqlContainer(
                "mariadb:11", username="gearstore", password="gearstore", dbname=TEST_DATABASE
            ).with_command("--max-allowed-packet=1G")
            scheme, internal_port = "mysql", 3306
        self._container.start()
        host = self._container.get_container_host_ip()
        port = self._container.get_exposed_port(internal_port)
        self.url = f"{scheme}://gearstore:gearstore@{host}:{port}/{TEST_DATABASE}"

    def close(self) -> None:
        """Remove the container."""
        self._container.stop()


# --- choosing a server ---------------------------------------------------------------------


def server_or_skip(
    kind: str, env_var: str, make_local: Callable[[], LocalServer] | None, install_hint: str
) -> DbServer:
    """A running server of ``kind``: external, local, container, or skip (in that order).

    ``make_local`` is None when the local binaries are missing.
    """
    url = os.environ.get(env_var)
    if url:
        return ExternalServer(kind, url)
    if make_local is not None:
        server = make_local()
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        return server
    if docker_available():
        return ContainerServer(kind)
    pytest.skip(f"no {kind} server available: {install_hint} or set {env_var}")


# --- per-test tables ------------------------------------------------------------------------


def unique_table_name(test_name: str) -> str:
    """A short lower-case table name, unique per call, that still says which test made it."""
    slug = "".join(c if c.isalnum() else "_" for c in test_name.lower())[:24].strip("_")
    return f"gs_{slug}_{os.urandom(4).hex()}"


def sqlalchemy_url(url: str) -> str:
    """The same URL with the driver these tests have installed (psycopg 3, PyMySQL)."""
    scheme, sep, rest = url.partition("://")
    driver = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
              "mysql": "mysql+pymysql", "mariadb": "mysql+pymysql"}.get(scheme, scheme)  # fmt: skip
    return f"{driver}{sep}{rest}"


def drop_tables(url: str, table: str) -> None:
    """Drop ``table`` and any ``<table>_*`` helper tables an adapter made next to it."""
    import sqlalchemy as sa

    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            # Fail rather than hang if a test left a store holding a lock on the table.
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SET lock_timeout = '10s'"))
            else:
                conn.execute(sa.text("SET SESSION lock_wait_timeout = 10"))
            names = sa.inspect(conn).get_table_names()
            preparer = conn.dialect.identifier_preparer
            for name in names:
                if name == table or name.startswith(f"{table}_"):
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS {preparer.quote(name)}"))
    finally:
        engine.dispose()
