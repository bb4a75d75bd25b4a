"""Start and stop the servers a benchmark compares: gearstore, gearmand, memcached,
and the throwaway PostgreSQL/MariaDB servers of tests/dbservers.py.

Every server runs on a free port in its own temporary directory and is stopped by the
caller (the runner wraps each in try/finally); nothing here touches a server it did
not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parent.parent
GEARMAND = shutil.which("gearmand", path="/usr/sbin:/usr/bin:/usr/local/sbin") or "gearmand"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_accepting(port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> float:
    """Poll until 127.0.0.1:port accepts; return the seconds waited."""
    began = time.monotonic()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return time.monotonic() - began
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} while starting")
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"nothing accepted on port {port} within {timeout:.0f} s")
        time.sleep(0.005)


class ServerProc:
    """One job server process (gearstore or gearmand) with the given store flags."""

    def __init__(self, kind: str, store_args: list[str], workdir: Path) -> None:
        self.kind = kind
        self.store_args = store_args
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    def argv(self) -> list[str]:
        """The command line; both servers get the same gearmand-spelled store flags."""
        if self.kind == "gearstore":
            base = [sys.executable, "-m", "gearstore", "--verbose", "WARNING"]
            base += ["--shutdown-timeout", "2", "-l", str(self.workdir / "gearstore.log")]
        else:
            base = [GEARMAND, "--verbose", "ERROR", "-l", str(self.workdir / "gearmand.log")]
            base += ["-P", str(self.workdir / "gearmand.pid")]
        return [*base, "-p", str(self.port), "-L", "127.0.0.1", *self.store_args]

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 600.0) -> float:
        """Start and wait until the port accepts; returns the seconds that took."""
        began = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{self.kind}.stderr", "ab"),  # noqa: SIM115
        )
        wait_accepting(self.port, self.proc, timeout)
        self.startup_seconds = time.monotonic() - began
        return self.startup_seconds

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        """Last lines of whatever the server wrote, for error messages."""
        text = ""
        for path in sorted(self.workdir.glob("*.log")) + sorted(self.workdir.glob("*.stderr")):
            text += f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-15:]) + "\n"
        return text


class Memcached:
    """A private memcached on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["memcached", "-u", "root", "-p", str(self.port), "-l", "127.0.0.1", "-M", "-m",
             "1024", "-U", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_accepting(self.port, self.proc, 30)

    @property
    def address(self) -> str:
        """host:port for --libmemcached-servers."""
        return f"127.0.0.1:{self.port}"

    def flush(self) -> None:
        """Empty it, so each run starts from a fresh store."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"flush_all\r\n")
            sock.recv(100)

    def close(self) -> None:
        """Stop it."""
        self.proc.terminate()
        self.proc.wait(10)


def start_database(kind: str) -> tuple[str, object]:
    """A throwaway PostgreSQL or MariaDB server from tests/dbservers.py: (url, handle).

    Raises RuntimeError with the reason when it cannot be started.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if kind == "postgres":
        from tests.fixtures.postgres import PostgresServer, find_postgres_bindir

        bindir = find_postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql)")
        server: object = PostgresServer(bindir)
    else:
        from tests.fixtures.mysql import MysqlServer, find_mysql_binaries

        found = find_mysql_binaries()
        if found is None:
            raise RuntimeError("no MariaDB/MySQL binaries (apt-get install mariadb-server)")
        server = MysqlServer(*found)
    try:
        server.start()  # type: ignore[attr-defined]
    except BaseException:
        server.close()  # type: ignore[attr-defined]
        raise
    return server.url, server  # type: ignore[attr-defined]


def store_flags(kind: str, location: str, run_id: str) -> list[str]:
    """gearmand-spelled store flags (gearstore accepts the same) for one fresh store.

    ``location``: a directory for sqlite/file, a URL for postgres/mysql, host:port for
    memcached. ``run_id`` makes the table, file or key prefix unique to this run.
    """
    if kind == "builtin":
        return []
    if kind == "sqlite":
        return ["-q", "libsqlite3", "--libsqlite3-db", f"{location}/{run_id}.db"]
    if kind == "file":
        return ["-q", "file", "--db", f"{location}/{run_id}"]
    if kind == "memcached":
        return ["-q", "libmemcached", "--libmemcached-servers", location,
                "--libmemcached-prefix", f"{run_id}_"]  # fmt: skip
    url = urlparse(location)
    db = url.path.lstrip("/") or "gearmand"
    if kind == "postgres":
        conninfo = f"host={url.hostname} port={url.port or 5432} dbname={db}"
        if url.username:
            conninfo += f" user={unquote(url.username)}"
        if url.password:
            conninfo += f" password={unquote(url.password)}"
        return ["-q", "Postgres", "--libpq-conninfo", conninfo, "--libpq-table", run_id]
    if kind == "mysql":
        flags = ["-q", "MySQL", "--mysql-host", url.hostname or "127.0.0.1",
                 "--mysql-port", str(url.port or 3306), "--mysql-db", db,
                 "--mysql-table", run_id]  # fmt: skip
        if url.username:
            flags += ["--mysql-user", unquote(url.username)]
        if url.password:
            flags += ["--mysql-password", unquote(url.password)]
        return flags
    raise ValueError(f"unknown store {kind}")


def new_workdir(prefix: str) -> Path:
    """A fresh temporary directory."""
    return Path(tempfile.mkdtemp(prefix=f"gearstore-bench-{prefix}-"))


def gearmand_version() -> str:
    """``gearmand -V`` output, one line."""
    try:
        out = subprocess.run([GEARMAND, "-V"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or out.stderr.strip()
    except OSError as exc:
        return f"unavailable ({exc})"


def gearmand_supports(kind: str) -> bool:
    """Whether this gearmand build has the queue type (file: gearmand has none)."""
    section = {"builtin": "builtin:", "sqlite": "libsqlite3:", "postgres": "Postgres:",
               "mysql": "MySQL:", "memcached": "libmemcached:"}.get(kind)  # fmt: skip
    if section is None:
        return False
    try:
        out = subprocess.run([GEARMAND, "--help"], capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    return section in out.stdout + out.stderr


def environment_note() -> dict[str, str]:
    """Versions that matter for reading the figures."""
    return {
        "python": sys.version.split()[0],
        "gearmand": gearmand_version(),
        "pid": str(os.getpid()),
    }
