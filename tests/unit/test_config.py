"""Configuration: precedence, bad values, masked secrets, gearmand's spellings.

Everything goes through the public entry points (``parse_args``, ``build_config``,
``cli.main``) with an explicit environment, so the machine's own GEARSTORE_* variables
cannot change a result.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from gearstore import cli
from gearstore.cli_options import OPTIONS, build_parser
from gearstore.config import Config, ConfigError, build_config, env_name, parse_args
from gearstore.stores import canonical_kind

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55"


def config_of(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    """The Config that ``gearstore argv`` would run with under ``environ``."""
    return parse_args(argv, environ or {})[0]


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gearstore.toml"
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------- precedence


# field, flag form, environment form, file form, expected value from each
PRECEDENCE = [
    ("port", ["-p", "4001"], "4002", "4003", (4001, 4002, 4003)),
    ("queue_type", ["-q", "sqlite"], "file", '"postgres"', ("sqlite", "file", "postgres")),
    ("shutdown_timeout", ["--shutdown-timeout", "1.5"], "2.5", "3.5", (1.5, 2.5, 3.5)),
    ("verbose", ["--verbose", "DEBUG"], "warning", '"ERROR"', ("DEBUG", "WARNING", "ERROR")),
    ("log_format", ["--log-format", "json"], "json", '"json"', ("json", "json", "json")),
    ("keepalive", ["--keepalive"], "yes", "true", (True, True, True)),
    ("listen", ["-L", "0.0.0.0"], "::1", '"10.0.0.1"', ("0.0.0.0", "::1", "10.0.0.1")),
]


@pytest.mark.parametrize(("field", "flag", "env", "file", "expected"), PRECEDENCE)
def test_command_line_beats_environment_beats_file_beats_default(
    tmp_path: Path,
    field: str,
    flag: list[str],
    env: str,
    file: str,
    expected: tuple[Any, Any, Any],
) -> None:
    db = ["--db", str(tmp_path / "db")]  # the store types here all need a location
    path = write_toml(tmp_path, f"{field} = {file}\n")
    environ = {env_name(field): env}
    default = getattr(Config(), field)
    assert getattr(config_of(db), field) == default
    assert getattr(config_of([*db, "--config", path]), field) == expected[2]
    assert getattr(config_of([*db, "--config", path], environ), field) == expected[1]
    assert getattr(config_of([*db, "--config", path, *flag], environ), field) == expected[0]


def test_defaults_match_the_config_dataclass() -> None:
    assert config_of([]) == Config()


def test_environment_is_taken_from_the_argument_not_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEARSTORE_PORT", "4999")
    assert config_of([], {}).port == 4730
    assert parse_args([])[0].port == 4999  # environ=None means os.environ


def test_config_file_from_environment_and_flag(tmp_path: Path) -> None:
    first = write_toml(tmp_path, "port = 4101\n")
    second = tmp_path / "other.toml"
    second.write_text("port = 4102\n")
    assert config_of([], {"GEARSTORE_CONFIG": first}).port == 4101
    assert config_of(["--config", str(second)], {"GEARSTORE_CONFIG": first}).port == 4102


def test_config_file_section_dashes_and_types(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "[gearstore]\n"
        "queue-type = 'sqlite'\n"
        f"db = '{tmp_path / 'jobs.db'}'\n"
        "shutdown-timeout = 5\n"  # a TOML integer for a float setting
        "keepalive = true\n"
        "port = '4200'\n"  # a string for an integer setting
        "migrate = false\n",
    )
    config = config_of(["--config", path])
    assert (config.queue_type, config.shutdown_timeout, config.port) == ("sqlite", 5.0, 4200)
    assert config.keepalive is True
    assert config.migrate is False


@pytest.mark.parametrize("text", ["1", "true", "YES", "on", "True"])
def test_true_spellings_in_environment(text: str) -> None:
    assert config_of([], {"GEARSTORE_ROUND_ROBIN": text}).round_robin is True


@pytest.mark.parametrize("text", ["0", "false", "No", "OFF", ""])
def test_false_spellings_in_environment(text: str) -> None:
    assert config_of([], {"GEARSTORE_MIGRATE": text}).migrate is False


def test_no_migrate_flag_beats_environment() -> None:
    assert config_of(["--no-migrate"], {"GEARSTORE_MIGRATE": "true"}).migrate is False
    assert config_of([], {"GEARSTORE_MIGRATE": "true"}).migrate is True


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["-v"], "INFO"),
        (["-vv"], "DEBUG"),
        (["-vvvvvv"], "DEBUG"),
        (["--verbose", "ERROR", "-v"], "WARNING"),
        (["--verbose", "3"], "ERROR"),
        (["--verbose=debug"], "DEBUG"),
    ],
)
def test_verbosity(argv: list[str], level: str) -> None:
    assert config_of(argv).verbose == level


def test_build_config_ignores_none_from_the_command_line() -> None:
    config = build_config({"port": None, "listen": "::"}, {"GEARSTORE_PORT": "4300"})
    assert (config.port, config.listen) == (4300, "::")


SAMPLES = {
    "queue_type": "sqlite",
    "db": "/tmp/jobs.db",
    "verbose": "DEBUG",
    "log_format": "json",
    "sqlite_synchronous": "NORMAL",
    "max_packet": "4096",
}


@pytest.mark.parametrize("name", [f.name for f in fields(Config) if f.name != "db_password_file"])
def test_every_setting_can_come_from_the_environment_alone(name: str) -> None:
    """A container's environment is enough to set anything (db_password_file is read at
    once, so it has its own test below)."""
    default = getattr(Config(), name)
    if name in SAMPLES:
        raw = SAMPLES[name]
    elif isinstance(default, bool):
        raw = str(not default).lower()
    elif isinstance(default, int | float):
        raw = "7.5" if isinstance(default, float) else "7"
    else:
        raw = "x"
    config = config_of([], {"GEARSTORE_DB": "/tmp/jobs.db", env_name(name): raw})
    assert str(getattr(config, name)).lower() == raw.lower()
    assert getattr(config, name) != default


# --------------------------------------------------------------------- bad values


BAD_ENV = [
    ({"GEARSTORE_PORT": "abc"}, ["port", "GEARSTORE_PORT", "'abc'"]),
    ({"GEARSTORE_PORT": "70000"}, ["port", "GEARSTORE_PORT", "0-65535", "70000"]),
    ({"GEARSTORE_PORT": ""}, ["port", "GEARSTORE_PORT"]),
    ({"GEARSTORE_QUEUE_TYPE": "oracle"}, ["queue type", "'oracle'", "sqlite", "postgres"]),
    ({"GEARSTORE_KEEPALIVE": "maybe"}, ["keepalive", "true or false", "'maybe'"]),
    ({"GEARSTORE_VERBOSE": "LOUD"}, ["verbose", "DEBUG", "'LOUD'"]),
    ({"GEARSTORE_LOG_FORMAT": "xml"}, ["log_format", "text", "json", "'xml'"]),
    ({"GEARSTORE_SQLITE_SYNCHRONOUS": "sometimes"}, ["sqlite_synchronous", "FULL"]),
    ({"GEARSTORE_SHUTDOWN_TIMEOUT": "soon"}, ["shutdown_timeout", "GEARSTORE_SHUTDOWN_TIMEOUT"]),
    ({"GEARSTORE_SHUTDOWN_TIMEOUT": "-1"}, ["--shutdown-timeout", "negative", "-1"]),
    ({"GEARSTORE_JOB_RETRIES": "-2"}, ["job_retries", "negative"]),
    ({"GEARSTORE_MAX_PACKET": "100"}, ["--max-packet", "1024", "100"]),
    ({"GEARSTORE_PREFIX": "a b"}, ["--prefix", "spaces"]),
    ({"GEARSTORE_QUEUE_TYPE": "sqlite"}, ["-q sqlite", "--db"]),
    ({"GEARSTORE_QUEUE_TYPE": "file"}, ["-q file", "--db DIR"]),
    ({"GEARSTORE_QUEUE_TYPE": "postgres"}, ["-q postgres", "postgresql://"]),
    ({"GEARSTORE_QUEUE_TYPE": "mysql"}, ["-q mysql", "mysql://", "--mysql-host"]),
    ({"GEARSTORE_QUEUE_TYPE": "memcached"}, ["-q memcached", "HOST:PORT"]),
]


@pytest.mark.parametrize(("environ", "words"), BAD_ENV)
def test_bad_environment_value_names_setting_and_source(
    environ: dict[str, str], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        config_of([], environ)
    for word in words:
        assert word in str(info.value)


BAD_ARGV = [
    (["-p", "70000"], ["--port", "0-65535"]),
    (["-q", "oracle"], ["--queue-type", "oracle"]),
    (["--shutdown-timeout", "-5"], ["--shutdown-timeout", "negative"]),
    (["-j", "-1"], ["--job-retries", "negative"]),
    (["--verbose", "chatty"], ["--verbose", "chatty"]),
    (["--mysql-port", "99999"], ["--mysql-port", "0-65535"]),
    (["-q", "sqlite", "--db-password-file", "/nonexistent/pw"], ["--db-password-file"]),
]


@pytest.mark.parametrize(("argv", "words"), BAD_ARGV)
def test_bad_command_line_value_is_a_config_error(argv: list[str], words: list[str]) -> None:
    if "sqlite" in argv:
        argv = [*argv, "--db", "/tmp/x.db"]
    with pytest.raises(ConfigError) as info:
        config_of(argv)
    for word in words:
        assert word in str(info.value)


BAD_FILES = [
    ("portt = 1\n", ["unknown setting", "portt"]),
    ("port = [1]\n", ["port", "config file", "list"]),
    ("port = \n", ["not valid TOML"]),
    ("gearstore = 5\n", ["[gearstore] must be a table"]),
    ("port = 4730.5\n", ["port", "config file"]),
]


@pytest.mark.parametrize(("text", "words"), BAD_FILES)
def test_bad_config_file_is_a_config_error(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config_of(["--config", path])
    for word in words:
        assert word in str(info.value)
    assert "gearstore.toml" in str(info.value) or "config file" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml"):
        config_of(["--config", str(tmp_path / "nope.toml")])


def test_cli_reports_config_errors_in_one_line_with_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEARSTORE_PORT", "99999")
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gearstore: error: ")
    assert "GEARSTORE_PORT" in err
    assert err.count("\n") == 1


def test_cli_rejects_unparsable_flags_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--port", "abc"])
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err


# ------------------------------------------------------------------ masked secrets


@pytest.fixture
def printed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``printed(argv, **env)`` runs ``gearstore --print-config`` and returns its JSON text."""

    def run(argv: list[str], **env: str) -> str:
        for name in [n for n in os.environ if n.startswith("GEARSTORE_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert cli.main([*argv, "--print-config"]) == 0
        out = capsys.readouterr().out
        json.loads(out)
        return out

    return run


SECRET_CASES = [
    (["--mysql-password", SECRET], {}),
    (["-q", "mysql", "--mysql-host", "db", "--mysql-password", SECRET], {}),
    (["-q", "postgres", "--db", "postgresql://u@db/q"], {"GEARSTORE_DB_PASSWORD": SECRET}),
    (["-q", "mysql", "--db", f"mysql://u:{SECRET}@db/q"], {}),
    (["-q", "mysql", "--db", f"mysql://u:{SECRET}@db:3306/q?charset=utf8mb4"], {}),
    (["-q", "postgres", "--db", f"postgresql://u:{SECRET}@h1,h2/q"], {}),
    (["-q", "postgres", "--libpq-conninfo", f"host=db user=u password={SECRET}"], {}),
    (["-q", "postgres", "--db", f"postgresql://u:p@{SECRET}@db/q"], {}),  # '@' in password
    ([], {"GEARSTORE_QUEUE_TYPE": "mysql", "GEARSTORE_DB": f"mysql://u:{SECRET}@db/q"}),
    ([], {"GEARSTORE_MYSQL_PASSWORD": SECRET}),
]


@pytest.mark.parametrize(("argv", "env"), SECRET_CASES)
def test_print_config_masks_secrets(printed: Any, argv: list[str], env: dict[str, str]) -> None:
    out = printed(argv, **env)
    assert SECRET not in out
    assert SECRET.split("-")[1] not in out
    assert "****" in out


def test_print_config_shows_every_setting_and_keeps_user_and_host(printed: Any) -> None:
    out = json.loads(printed(["-q", "mysql", "--db", f"mysql://alice:{SECRET}@db.internal/q"]))
    assert set(out) == {f.name for f in fields(Config)}
    assert out["db"] == "mysql://alice:****@db.internal/q"
    assert out["queue_type"] == "mysql"


def test_password_file_is_read_but_not_printed(printed: Any, tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n")
    argv = ["-q", "postgres", "--db", "postgresql://u@db/q", "--db-password-file", str(secret_file)]
    assert SECRET not in printed(argv)
    config = config_of(argv)
    assert config.password() == SECRET
    assert config.resolved_db() == f"postgresql://u:{SECRET}@db/q"


@pytest.mark.parametrize(
    "db",
    [
        f"postgresql://u@db/q?password={SECRET}",
        f"host=db user=u password='x {SECRET}'",
        f"host=db user=u password = {SECRET}",
    ],
)
def test_print_config_masks_other_libpq_password_forms(printed: Any, db: str) -> None:
    out = printed(["-q", "postgres", "--db", db])
    assert SECRET not in out
    assert SECRET.split("-")[1] not in out


# -------------------------------------------------------------- gearmand spellings


SPELLINGS = [
    (["--libsqlite3-db", "/q.db"], ["--db", "/q.db"]),
    (["--libsqlite3-table", "gq"], ["--table", "gq"]),
    (["--libpq-conninfo", "host=db dbname=q"], ["--db", "host=db dbname=q"]),
    (["--libpq-table", "gq"], ["--table", "gq"]),
    (["--mysql-table", "gq"], ["--table", "gq"]),
    (["--libmemcached-servers", "m1:11211,m2:11211"], ["--db", "m1:11211,m2:11211"]),
    (["--libmemcached-prefix", "gear_"], ["--prefix", "gear_"]),
    (["-p", "4731"], ["--port", "4731"]),
    (["-L", "::"], ["--listen", "::"]),
    (["-j", "3"], ["--job-retries", "3"]),
    (["-w", "2"], ["--worker-wakeup", "2"]),
    (["-R"], ["--round-robin"]),
    (["-l", "/var/log/g.log"], ["--log-file", "/var/log/g.log"]),
    (["-P", "/run/g.pid"], ["--pid-file", "/run/g.pid"]),
    (["-b", "64"], ["--backlog", "64"]),
    (["-f", "4096"], ["--file-descriptors", "4096"]),
    (["-t", "4"], ["--threads", "4"]),
    (["-u", "gearman"], ["--user", "gearman"]),
    (["-d"], ["--daemon"]),
    (["--port=4731", "--listen=localhost"], ["-p", "4731", "-L", "localhost"]),
]


@pytest.mark.parametrize(("gearmand", "ours"), SPELLINGS)
def test_gearmand_spellings_fill_the_same_fields(gearmand: list[str], ours: list[str]) -> None:
    assert config_of(gearmand) == config_of(ours)
    assert config_of(gearmand) != Config()


@pytest.mark.parametrize(
    ("gearmand", "ours"),
    [
        ("libsqlite3", "sqlite"),
        ("Postgres", "postgres"),
        ("libpq", "postgres"),
        ("MySQL", "mysql"),
        ("libmemcached", "memcached"),
        ("builtin", "builtin"),
    ],
)
def test_gearmand_queue_type_names(gearmand: str, ours: str) -> None:
    a = config_of(["-q", gearmand, "--db", "x"])
    b = config_of(["-q", ours, "--db", "x"])
    assert canonical_kind(a.queue_type) == canonical_kind(b.queue_type)
    assert replace(a, queue_type=ours) == b
    assert a.store_config().db == b.store_config().db


def test_gearmand_mysql_flags_build_the_url() -> None:
    argv = ["-q", "MySQL", "--mysql-host", "db", "--mysql-port", "3307"]
    argv += ["--mysql-user", "gear man", "--mysql-db", "jobs"]
    config = config_of(argv, {"GEARSTORE_DB_PASSWORD": "p@ss:word"})
    assert config.resolved_db() == "mysql://gear%20man:p%40ss%3Aword@db:3307/jobs"
    assert config.store_config().db == config.resolved_db()
    assert config.masked()["db"] is None  # never the built URL with its password


def test_debian_gearmand_unit_command_line_is_accepted() -> None:
    """What Debian's gearman-job-server.service runs, flag for flag."""
    argv = ["--pid-file=/run/gearman/gearmand.pid", "--listen=localhost", "--daemon"]
    argv += ["--log-file=/var/log/gearman-job-server/gearmand.log"]
    config = config_of(argv)
    assert (config.pid_file, config.listen, config.daemon) == (
        "/run/gearman/gearmand.pid",
        "localhost",
        True,
    )


@pytest.mark.parametrize(
    "argv",
    [["--syslog"], ["--coredump"], ["--hashtable-buckets", "991"], ["-r", "http"]],
    ids=" ".join,
)
def test_gearmand_flags_for_missing_features_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/migrating-from-gearmand.md promises a refusal, not a silently ignored flag."""
    with pytest.raises(SystemExit) as info:
        config_of(argv)
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_every_flag_names_its_environment_variable_in_help() -> None:
    text = build_parser().format_help()
    for _, field, _ in OPTIONS:
        assert env_name(field) in text


# ----------------------------------------------------------- configuration.md


def test_configuration_doc_is_up_to_date() -> None:
    """docs/configuration.md's table is what scripts/gen-config-doc.py generates now."""
    spec = importlib.util.spec_from_file_location(
        "gen_config_doc", ROOT / "scripts/gen-config-doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (ROOT / "docs" / "configuration.md").read_text()
    assert module.rewrite(current) == current, "run scripts/gen-config-doc.py"
    for f in fields(Config):
        assert f"`{env_name(f.name)}`" in current
    for flags, _, _ in OPTIONS:
        for flag in flags:
            assert f"`{flag}`" in current
