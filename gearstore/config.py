"""Configuration: parsed once into a frozen :class:`Config`.

Every option has a gearmand-compatible flag, a ``GEARSTORE_<NAME>`` environment
variable (so compose files and Kubernetes manifests need no shell quoting) and a key in
the optional TOML config file. Precedence, highest first: command line, environment,
config file, built-in default.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gearstore import __version__
from gearstore.protocol.codec import DEFAULT_MAX_PACKET
from gearstore.stores import canonical_kind
from gearstore.stores.base import StoreConfig

ENV_PREFIX = "GEARSTORE_"
LOG_LEVELS = ("FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")
SECRET_FIELDS = frozenset({"mysql_password", "db_password"})


class ConfigError(Exception):
    """A configuration value is wrong; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration of one server process."""

    port: int = 4730
    listen: str = "127.0.0.1"
    queue_type: str = "builtin"
    db: str | None = None
    table: str | None = None
    prefix: str = "gearstore"
    db_password: str | None = None
    db_password_file: str | None = None
    mysql_host: str | None = None
    mysql_port: int = 3306
    mysql_user: str | None = None
    mysql_password: str | None = None
    mysql_db: str | None = None
    sqlite_synchronous: str = "FULL"
    migrate: bool = True
    store_queue_on_shutdown: bool = False
    job_retries: int = 0
    worker_wakeup: int = 0
    round_robin: bool = False
    job_handle_prefix: str = ""
    exceptions: bool = False
    log_file: str = "stderr"
    log_format: str = "text"
    verbose: str = "INFO"
    pid_file: str | None = None
    keepalive: bool = False
    keepalive_idle: int = 30
    keepalive_interval: int = 10
    keepalive_count: int = 5
    max_packet: int = DEFAULT_MAX_PACKET
    backlog: int = 1024
    shutdown_timeout: float = 30.0
    daemon: bool = False
    user: str | None = None
    file_descriptors: int = 0
    threads: int = 0

    @property
    def handle_prefix(self) -> bytes:
        """The middle part of job handles (``H:<prefix>:<n>``)."""
        return (self.job_handle_prefix or socket.gethostname()).encode()

    @property
    def persistent(self) -> bool:
        """True when a real store is configured."""
        return canonical_kind(self.queue_type) != "builtin"

    def store_config(self) -> StoreConfig:
        """What the store adapter needs, with the password filled in."""
        return StoreConfig(
            kind=self.queue_type,
            db=self.resolved_db(),
            table=self.table,
            prefix=self.prefix,
            migrate=self.migrate,
            sqlite_synchronous=self.sqlite_synchronous,
        )

    def password(self) -> str | None:
        """The database password from --db-password-file, GEARSTORE_DB_PASSWORD or
        --mysql-password (in that order)."""
        if self.db_password_file:
            try:
                return Path(self.db_password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read --db-password-file {self.db_password_file}: {exc.strerror}"
                ) from exc
        return self.db_password or self.mysql_password

    def resolved_db(self) -> str | None:
        """The store location, built from gearmand's MySQL flags when those are used."""
        kind = canonical_kind(self.queue_type)
        password = self.password()
        if kind == "mysql" and self.db is None and self.mysql_host:
            user = quote(self.mysql_user or "root", safe="")
            auth = user + (":" + quote(password, safe="") if password else "")
            return (
                f"mysql://{auth}@{self.mysql_host}:{self.mysql_port}/{self.mysql_db or 'gearmand'}"
            )
        if password and self.db and "://" in self.db and kind in ("mysql", "postgres"):
            scheme, rest = self.db.split("://", 1)
            if "@" in rest:
                userinfo, host = rest.split("@", 1)
                if ":" not in userinfo:
                    return f"{scheme}://{userinfo}:{quote(password, safe='')}@{host}"
        if password and self.db and "://" not in self.db and kind == "postgres":
            return f"{self.db} password={password}"
        return self.db

    def masked(self) -> dict[str, Any]:
        """Every field, with secrets (and passwords inside URLs) masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = "****"
            elif f.name == "db" and isinstance(value, str):
                value = mask_url(value)
            out[f.name] = value
        return out


_LIBPQ_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Hide passwords: ``scheme://user:password@host``, ``?password=``, and libpq's
    ``password = 'x y'`` (quoted or not, spaces around ``=`` or not)."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if "@" in rest.split("/", 1)[0] or ("@" in rest and "?" not in rest.split("@")[0]):
            userinfo, host = rest.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":****"
            rest = f"{userinfo}@{host}"
        return _QUERY_PASSWORD.sub(r"\1****", f"{scheme}://{rest}")
    return _LIBPQ_PASSWORD.sub("password=****", url)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _level(text: str) -> str:
    upper = text.strip().upper()
    if upper.isdigit():
        return LOG_LEVELS[min(int(upper), len(LOG_LEVELS) - 1)]
    if upper not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return upper


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number 0-65535, got {value}")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text.upper() not in choices and text.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text.lower() if text.lower() in choices else text.upper()

    return convert


def _queue_type(text: str) -> str:
    canonical_kind(text)
    return text


# field -> converter for values coming from the environment or the config file
CONVERTERS: dict[str, Callable[[str], Any]] = {
    "port": _port,
    "mysql_port": _port,
    "queue_type": _queue_type,
    "job_retries": _positive_int,
    "worker_wakeup": _positive_int,
    "keepalive_idle": _positive_int,
    "keepalive_interval": _positive_int,
    "keepalive_count": _positive_int,
    "max_packet": _positive_int,
    "backlog": _positive_int,
    "file_descriptors": _positive_int,
    "threads": _positive_int,
    "shutdown_timeout": float,
    "verbose": _level,
    "log_format": _choice("text", "json"),
    "sqlite_synchronous": _choice("FULL", "NORMAL", "OFF", "EXTRA"),
}
for _f in fields(Config):
    if _f.type in ("bool", bool):
        CONVERTERS[_f.name] = _bool


def env_name(field: str) -> str:
    """The environment variable for a config field."""
    return ENV_PREFIX + field.upper()


def build_config(
    cli: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    file_values: Mapping[str, Any] | None = None,
) -> Config:
    """Merge command line (values not None), environment and file over the defaults."""
    environ = os.environ if environ is None else environ
    file_values = file_values or {}
    known = {f.name for f in fields(Config)}
    unknown = set(file_values) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in config file: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name in known:
        convert = CONVERTERS.get(name, str)
        source = None
        raw: Any = None
        if cli.get(name) is not None:
            source, raw = "command line", cli[name]
        elif env_name(name) in environ:
            source, raw = env_name(name), environ[env_name(name)]
        elif name in file_values:
            source, raw = "config file", file_values[name]
        if source is None:
            continue
        try:
            values[name] = raw if source == "command line" else _from_text(convert, raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {name} from {source}: {exc}") from None
    config = Config(**values)
    _validate(config)
    return config


def _from_text(convert: Callable[[str], Any], raw: Any) -> Any:
    if isinstance(raw, bool) and convert is _bool:
        return raw
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise ValueError(f"expected a string or number, got {type(raw).__name__}")
    return convert(raw)


def _validate(config: Config) -> None:
    kind = canonical_kind(config.queue_type)
    if kind != "builtin" and not config.resolved_db():
        hints = {
            "sqlite": "--db PATH (or --libsqlite3-db PATH)",
            "journal": "--db DIR",
            "postgres": "--db postgresql://USER@HOST/DB (or --libpq-conninfo)",
            "mysql": "--db mysql://USER@HOST/DB (or --mysql-host/--mysql-db)",
            "memcached": "--db HOST:PORT[,HOST:PORT] (or --libmemcached-servers)",
        }
        raise ConfigError(f"-q {config.queue_type} needs {hints.get(kind, '--db')}")
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"--{f.name.replace('_', '-')} must not be negative, got {value}")
    if config.max_packet < 1024:
        raise ConfigError(f"--max-packet must be at least 1024 bytes, got {config.max_packet}")
    if config.prefix and any(c.isspace() or ord(c) < 33 for c in config.prefix):
        raise ConfigError("--prefix must not contain spaces or control characters")


def load_file(path: str) -> dict[str, Any]:
    """Read a TOML config file; keys are option names with ``-`` or ``_``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    section = data.get("gearstore", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [gearstore] must be a table")
    return {key.replace("-", "_"): value for key, value in section.items()}


def parse_args(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[Config, argparse.Namespace]:
    """Parse the server's command line into a Config. Raises ConfigError for bad values;
    argparse itself exits with status 2 for malformed flags (e.g. ``--port abc``)."""
    from gearstore.cli_options import build_parser, cli_values

    environ = os.environ if environ is None else environ
    parser = build_parser()
    namespace = parser.parse_args(list(argv))
    config_path = namespace.config or environ.get(env_name("config"))
    file_values = load_file(config_path) if config_path else {}
    return build_config(cli_values(namespace), environ, file_values), namespace


__all__ = ["Config", "ConfigError", "build_config", "env_name", "load_file", "parse_args"]
__all__ += ["LOG_LEVELS", "__version__"]
