"""The server's command-line flags, with gearmand's names.

Flags that name the same setting in gearmand's per-store spelling (``--libsqlite3-db``,
``--libpq-conninfo``, ``--libmemcached-servers`` …) fill the same Config field as
gearstore's own ``--db``/``--table``/``--prefix``.
"""

from __future__ import annotations

import argparse
from typing import Any

from gearstore import __version__
from gearstore.config import CONVERTERS, LOG_LEVELS, ConfigError, env_name

# (flags, Config field, argparse keywords)
OPTIONS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("-p", "--port"), "port", {"type": int, "help": "TCP port to listen on (4730)"}),
    (
        ("-L", "--listen"),
        "listen",
        {"help": "address to bind (127.0.0.1; gearmand binds every interface)"},
    ),
    (
        ("-q", "--queue-type"),
        "queue_type",
        {"help": "queue store: builtin, sqlite, file, postgres, mysql, memcached"},
    ),
    (("--db",), "db", {"help": "store location: file, directory, URL or host:port list"}),
    (("--table",), "table", {"help": "table name for the SQL stores (gearstore_queue)"}),
    (("--prefix",), "prefix", {"help": "key prefix for the memcached store (gearstore)"}),
    (("--libsqlite3-db",), "db", {"help": "gearmand spelling of --db for -q libsqlite3"}),
    (("--libsqlite3-table",), "table", {"help": "gearmand spelling of --table"}),
    (("--libpq-conninfo",), "db", {"help": "gearmand spelling of --db for -q Postgres"}),
    (("--libpq-table",), "table", {"help": "gearmand spelling of --table"}),
    (("--mysql-host",), "mysql_host", {"help": "MySQL host (gearmand spelling)"}),
    (("--mysql-port",), "mysql_port", {"type": int, "help": "MySQL port (3306)"}),
    (("--mysql-user",), "mysql_user", {"help": "MySQL user"}),
    (
        ("--mysql-password",),
        "mysql_password",
        {"help": "MySQL password (visible in ps: prefer GEARSTORE_DB_PASSWORD)"},
    ),
    (("--mysql-db",), "mysql_db", {"help": "MySQL database"}),
    (("--mysql-table",), "table", {"help": "gearmand spelling of --table"}),
    (("--libmemcached-servers",), "db", {"help": "gearmand spelling of --db for memcached"}),
    (("--libmemcached-prefix",), "prefix", {"help": "gearmand spelling of --prefix"}),
    (
        ("--db-password-file",),
        "db_password_file",
        {"help": "read the database password from this file"},
    ),
    (
        ("--sqlite-synchronous",),
        "sqlite_synchronous",
        {
            "type": str.upper,
            "choices": ["FULL", "NORMAL", "OFF", "EXTRA"],
            "help": "SQLite durability (FULL)",
        },
    ),
    (
        ("--no-migrate",),
        "migrate",
        {"action": "store_false", "help": "do not upgrade the schema at start"},
    ),
    (
        ("--store-queue-on-shutdown",),
        "store_queue_on_shutdown",
        {"action": "store_true", "help": "write the store only at a clean shutdown"},
    ),
    (
        ("-j", "--job-retries"),
        "job_retries",
        {"type": int, "help": "fail a job after N attempts (0: never)"},
    ),
    (
        ("-w", "--worker-wakeup"),
        "worker_wakeup",
        {"type": int, "help": "wake at most N sleeping workers per job (0: all)"},
    ),
    (
        ("-R", "--round-robin"),
        "round_robin",
        {"action": "store_true", "help": "rotate each worker's functions"},
    ),
    (("--job-handle-prefix",), "job_handle_prefix", {"help": "job handle prefix (host name)"}),
    (
        ("--exceptions",),
        "exceptions",
        {"action": "store_true", "help": "forward WORK_EXCEPTION to every client"},
    ),
    (("-l", "--log-file"), "log_file", {"help": "log file, or stderr (default)"}),
    (("--log-format",), "log_format", {"choices": ["text", "json"], "help": "text or json"}),
    (("--verbose",), "verbose", {"metavar": "LEVEL", "help": "log level: " + " ".join(LOG_LEVELS)}),
    (("-P", "--pid-file"), "pid_file", {"help": "write the process id here"}),
    (
        ("--keepalive",),
        "keepalive",
        {"action": "store_true", "help": "enable TCP keepalive on connections"},
    ),
    (("--keepalive-idle",), "keepalive_idle", {"type": int, "help": "seconds (30)"}),
    (("--keepalive-interval",), "keepalive_interval", {"type": int, "help": "seconds (10)"}),
    (("--keepalive-count",), "keepalive_count", {"type": int, "help": "probes (5)"}),
    (
        ("--max-packet",),
        "max_packet",
        {"type": int, "help": "largest accepted packet in bytes (64 MiB)"},
    ),
    (("-b", "--backlog"), "backlog", {"type": int, "help": "listen backlog (1024)"}),
    (
        ("--shutdown-timeout",),
        "shutdown_timeout",
        {"type": float, "help": "seconds running jobs get to finish on SIGTERM (30)"},
    ),
    (("-d", "--daemon"), "daemon", {"action": "store_true", "help": "detach into the background"}),
    (("-u", "--user"), "user", {"help": "switch to this user after binding"}),
    (
        ("-f", "--file-descriptors"),
        "file_descriptors",
        {"type": int, "help": "raise the open-file limit to N"},
    ),
    (
        ("-t", "--threads"),
        "threads",
        {"type": int, "help": "accepted for gearmand compatibility; gearstore uses one loop"},
    ),
]

BOOL_FIELDS = {field for _, field, kw in OPTIONS if kw.get("action", "").startswith("store_")}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``gearstore [options]``."""
    parser = argparse.ArgumentParser(
        prog="gearstore",
        description=(
            "A Gearman job server whose background jobs survive restarts and crashes. "
            "Every option also reads GEARSTORE_<OPTION> from the environment "
            "(e.g. GEARSTORE_QUEUE_TYPE=sqlite, GEARSTORE_DB=/var/lib/gearstore/jobs.db). "
            "Precedence: command line, environment, --config file, default. "
            "Subcommands: gearstore db upgrade|current|import-gearmand --help."
        ),
    )
    for flags, field, kwargs in OPTIONS:
        kwargs = dict(kwargs)
        kwargs.setdefault("default", None)
        if kwargs.get("action") == "store_false":
            kwargs["default"] = None
        help_text = kwargs.get("help", "")
        kwargs["help"] = f"{help_text} [env {env_name(field)}]"
        parser.add_argument(*flags, dest=flags[-1].lstrip("-").replace("-", "_"), **kwargs)
    parser.add_argument("-v", action="count", default=0, help="more verbose (repeatable)")
    parser.add_argument("--config", help="TOML config file [env GEARSTORE_CONFIG]")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (secrets masked) and exit",
    )
    parser.add_argument("-V", "--version", action="version", version=f"gearstore {__version__}")
    return parser


def cli_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """Config field -> value for every flag given on the command line."""
    values: dict[str, Any] = {}
    for flags, field, _ in OPTIONS:
        value = getattr(namespace, flags[-1].lstrip("-").replace("-", "_"))
        if value is not None:
            values[field] = value
    if namespace.v:
        base = values.get("verbose", "NOTICE")
        index = min(LOG_LEVELS.index(_convert("verbose", base)) + namespace.v, len(LOG_LEVELS) - 1)
        values["verbose"] = LOG_LEVELS[index]
    for field in ("verbose", "queue_type", "port", "mysql_port"):
        if field in values:
            values[field] = _convert(field, values[field])
    return values


def _convert(field: str, value: Any) -> Any:
    try:
        return CONVERTERS[field](str(value))
    except ValueError as exc:
        flag = "--" + field.replace("_", "-")
        raise ConfigError(f"invalid {flag}: {exc}") from None
