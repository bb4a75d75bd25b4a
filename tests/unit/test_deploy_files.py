"""The deployment files agree with the CLI they drive.

There is no Docker engine in the test environment, so the image is never built here.
Instead every flag and GEARSTORE_* variable that the Dockerfile, docker-compose.yml, the
systemd unit and docs/deployment.md use is put through the real parser and Config, the
image's health check one-liner is run against a real server, and the image's default
command is started as a real process. ``docker compose config`` and ``systemd-analyze
verify`` run when they are installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from gearstore.cli_options import build_parser
from gearstore.config import Config, env_name, parse_args
from gearstore.stores import canonical_kind
from tests.fixtures.server import ServerThread, free_port

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
UNIT = ROOT / "docs" / "gearstore.service"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
DOCKERIGNORE = ROOT / ".dockerignore"

#: GEARSTORE_* names that are not Config fields but are still read by the CLI
EXTRA_ENV = {"GEARSTORE_CONFIG"}
VALID_ENV = {env_name(f.name) for f in fields(Config)} | EXTRA_ENV
MAX_JOB_DATA = 64 << 20

#: gearstore service -> (store kind, backend service, profile)
VARIANTS = {
    "gearstore": ("sqlite", None, None),
    "gearstore-file": ("journal", None, "file"),
    "gearstore-postgres": ("postgres", "postgres", "postgres"),
    "gearstore-mysql": ("mysql", "mariadb", "mysql"),
    "gearstore-memcached": ("memcached", "memcached", "memcached"),
}


# ----------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined;
    stage 0 holds what comes before the first FROM (global ARGs)."""
    stages: list[list[tuple[str, str]]] = [[]]
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for word, rest in stage if word == name]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV a stage sets (``ENV A=1 B=2`` and the legacy ``ENV A 1`` form)."""
    env: dict[str, str] = {}
    for rest in instructions(stage, "ENV"):
        words = shlex.split(rest)
        if words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def exec_form(text: str) -> list[str]:
    """A JSON-array instruction argument (the exec form)."""
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def image_env() -> dict[str, str]:
    return env_of(final_stage())


def image_cmd() -> list[str]:
    (cmd,) = instructions(final_stage(), "CMD")
    return exec_form(cmd)


def healthcheck_command() -> list[str]:
    (health,) = instructions(final_stage(), "HEALTHCHECK")
    options, _, command = health.partition(" CMD ")
    assert command, "HEALTHCHECK needs a CMD"
    assert "--timeout" in options and "--interval" in options
    return exec_form(command.strip())


def test_dockerfile_is_multi_stage_with_a_slim_python_final_stage() -> None:
    stages = dockerfile_stages()
    args = dict(a.partition("=")[::2] for a in instructions(stages[0], "ARG"))
    assert len(stages) >= 3, "a builder stage and a final stage"
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], s[0][1].split()[0]) for s in stages[1:]]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", images[-1]), images[-1]
    builder = " ".join(rest for stage in stages[1:-1] for _, rest in stage)
    assert "pip wheel" in builder or "-m build" in builder


def test_final_stage_installs_only_the_wheels_with_every_extra() -> None:
    stage = final_stage()
    runs = " ".join(instructions(stage, "RUN"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    match = re.search(r"gearstore\[([a-z,]+)\]", runs)
    assert match, "the final stage installs gearstore with extras"
    assert set(match[1].split(",")) == {"fast", "postgres", "mysql", "memcached"}
    assert set(match[1].split(",")) <= set(extras)
    assert "--no-index" in runs, "install from the builder's wheels only"
    assert not instructions(stage, "COPY") or all(
        "--from=" in copy for copy in instructions(stage, "COPY")
    ), "no source tree in the final image"
    for compiler in ("gcc", "build-essential", "g++", "-dev "):
        assert compiler not in runs


def test_image_runs_as_non_root_with_volume_port_and_entrypoint() -> None:
    stage = final_stage()
    (user,) = instructions(stage, "USER")
    assert user.split(":")[0] not in ("root", "0")
    volumes = [v for text in instructions(stage, "VOLUME") for v in exec_form(text)]
    assert "/var/lib/gearstore" in volumes
    assert instructions(stage, "EXPOSE") == ["4730"]
    (entrypoint,) = instructions(stage, "ENTRYPOINT")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert exec_form(entrypoint) == ["gearstore"]
    assert "gearstore" in pyproject["project"]["scripts"]
    assert instructions(stage, "STOPSIGNAL") in ([], ["SIGTERM"])


def test_image_default_command_and_environment_are_accepted_by_the_cli() -> None:
    env = image_env()
    assert {name for name in env if name.startswith("GEARSTORE_")} <= VALID_ENV
    build_parser().parse_args(image_cmd())
    config, _ = parse_args(image_cmd(), env)
    assert config.listen == "0.0.0.0", "a container must listen on every interface"
    assert canonical_kind(config.queue_type) == "sqlite"
    assert config.db is not None and config.db.startswith("/var/lib/gearstore/")
    assert instructions(final_stage(), "EXPOSE") == [str(config.port)]


def test_every_gearstore_variable_named_in_the_deploy_files_exists() -> None:
    for path in (DOCKERFILE, COMPOSE, UNIT, DEPLOYMENT_DOC, ROOT / "docs/configuration.md"):
        names = set(re.findall(r"GEARSTORE_[A-Z0-9_]+", path.read_text()))
        assert names <= VALID_ENV, f"{path.name}: {sorted(names - VALID_ENV)}"


def run_healthcheck(port: int) -> subprocess.CompletedProcess[bytes]:
    command = healthcheck_command()
    assert command[0] in ("python", "python3")
    return subprocess.run(
        [sys.executable, *command[1:]],
        env={**os.environ, "GEARSTORE_PORT": str(port)},
        capture_output=True,
        timeout=30,
    )


def test_healthcheck_passes_against_a_running_server(
    server_factory: Callable[..., ServerThread],
) -> None:
    server = server_factory()
    result = run_healthcheck(server.port)
    assert result.returncode == 0, result.stderr.decode()


def test_healthcheck_fails_when_nothing_listens() -> None:
    assert run_healthcheck(free_port()).returncode != 0


def test_healthcheck_fails_against_something_that_is_not_gearstore() -> None:
    import socket
    import threading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        assert run_healthcheck(listener.getsockname()[1]).returncode != 0
        thread.join(10)


def test_image_command_starts_a_healthy_server_that_stops_on_sigterm(tmp_path: Path) -> None:
    """The image's ENV + CMD as a real process, with the volume moved to tmp_path."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEARSTORE_")}
    for name, value in image_env().items():
        env[name] = value.replace("/var/lib/gearstore", str(tmp_path))
    env["GEARSTORE_PORT"] = str(port)
    log = tmp_path / "gearstore.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gearstore", *image_cmd()], stdout=out, stderr=out, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while (result := run_healthcheck(port)).returncode != 0 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert result.returncode == 0, log.read_text()
        assert list(tmp_path.glob("gearstore.db*")), "the store is where GEARSTORE_DB says"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


# ---------------------------------------------------------------- .dockerignore


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def docker_ignores(path: str) -> bool:
    """Docker's rule: the last matching line wins; a match on a parent counts."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _ignore_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_what_the_build_copies_and_nothing_else() -> None:
    copied = []
    for stage in dockerfile_stages()[1:]:
        for rest in instructions(stage, "COPY"):
            words = [w for w in rest.split() if not w.startswith("--")]
            copied += [w.rstrip("/") for w in words[:-1]]
    for source in copied:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file"
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        files = [p for p in files if "__pycache__" not in p.parts and p.suffix != ".pyc"]
        for file in files:
            assert not docker_ignores(str(file.relative_to(ROOT))), file
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "x.db"):
        assert docker_ignores(unwanted), unwanted
    assert docker_ignores("gearstore/__pycache__/cli.cpython-311.pyc")


# ------------------------------------------------------------ docker-compose.yml


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


_VAR = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Compose's variable substitution, with the file's own defaults."""

    def sub(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1] or match[4]
        op, arg = match[2], match[3]
        value = environ.get(name)
        if (op in (":-", ":?") and not value) or (op in ("-", "?") and value is None):
            if op.endswith("?"):
                raise AssertionError(f"${{{name}}} is required: {arg}")
            return arg
        return value or ""

    return _VAR.sub(sub, text)


#: what an operator exports (or writes to .env) before `docker compose up`
HOST_ENV = {"GEARSTORE_DB_PASSWORD": "pw-from-dotenv"}


def effective(service: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(arguments after ENTRYPOINT, environment) inside a gearstore service's container."""
    env = dict(image_env())
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    for key, value in environment.items():
        env[key] = interpolate(str(value), HOST_ENV)
    command = service.get("command", image_cmd())
    if isinstance(command, str):
        command = shlex.split(command)
    return [interpolate(str(a), HOST_ENV) for a in command], env


def duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|s|m|h)", str(text)):
        total += float(number) * units[unit]
    return total


def size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    assert match, text
    return int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2]]


def port_pairs(service: Mapping[str, Any]) -> list[tuple[int, int]]:
    pairs = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            pairs.append((int(entry["published"]), int(entry["target"])))
        else:
            *_, host, container = str(entry).split(":")
            pairs.append((int(host), int(container)))
    return pairs


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(compose()["services"])


def test_compose_has_every_variant_in_its_profile(services: dict[str, Any]) -> None:
    for name, (_, backend, profile) in VARIANTS.items():
        assert name in services, name
        assert services[name].get("profiles") == ([profile] if profile else None), name
        if backend:
            assert services[backend].get("profiles") == [profile], backend
    assert set(services) == set(VARIANTS) | {b for _, b, _ in VARIANTS.values() if b}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_compose_service_configuration_is_accepted_by_the_cli(
    services: dict[str, Any], name: str
) -> None:
    kind, backend, _ = VARIANTS[name]
    service = services[name]
    argv, env = effective(service)
    assert {key for key in env if key.startswith("GEARSTORE_")} <= VALID_ENV
    build_parser().parse_args(argv)
    config, _ = parse_args(argv, env)
    assert canonical_kind(config.queue_type) == kind
    assert config.listen == "0.0.0.0"
    assert service.get("build") and str(service.get("image", "")).startswith("gearstore")
    # The published port reaches the port gearstore listens on, and the image's health
    # check looks at that same port.
    (pair,) = port_pairs(service)
    assert pair[1] == config.port == int(env.get("GEARSTORE_PORT", config.port))
    # compose must wait for running jobs before it sends SIGKILL
    assert duration(service["stop_grace_period"]) >= config.shutdown_timeout + 5
    if backend:
        assert service["depends_on"][backend]["condition"] == "service_healthy"
        assert services[backend].get("healthcheck", {}).get("test"), backend
        store = config.resolved_db() or ""
        host = re.split(r"[@/:,]", store.split("@")[-1].split("//")[-1])[0]
        assert host == backend, f"{name} must reach the {backend} service, not {host}"


def test_compose_host_ports_are_distinct(services: dict[str, Any]) -> None:
    hosts = [port_pairs(services[name])[0][0] for name in VARIANTS]
    assert len(set(hosts)) == len(hosts)
    assert port_pairs(services["gearstore"]) == [(4730, 4730)]


@pytest.mark.parametrize("name", ["gearstore", "gearstore-file"])
def test_compose_file_stores_live_on_named_volumes(services: dict[str, Any], name: str) -> None:
    argv, env = effective(services[name])
    db = parse_args(argv, env)[0].db or ""
    declared = compose().get("volumes", {})
    mounts = [str(v).split(":") for v in services[name]["volumes"]]
    assert any(src in declared and db.startswith(target + "/") for src, target, *_ in mounts)
    assert len({m[0] for n in VARIANTS for m in _mounts(n)}) == sum(
        1 for n in VARIANTS if _mounts(n)
    ), "no two variants may share a volume: the store is locked by one server"


def _mounts(name: str) -> list[list[str]]:
    return [str(v).split(":") for v in compose()["services"][name].get("volumes", [])]


@pytest.mark.parametrize(
    ("backend", "data_dir"),
    [("postgres", "/var/lib/postgresql/data"), ("mariadb", "/var/lib/mysql")],
)
def test_compose_databases_keep_data_on_named_volumes(
    services: dict[str, Any], backend: str, data_dir: str
) -> None:
    mounts = [str(v).split(":") for v in services[backend]["volumes"]]
    assert any(src in compose()["volumes"] and target == data_dir for src, target, *_ in mounts)


@pytest.mark.parametrize(
    ("name", "user_var", "db_var", "password_var"),
    [
        ("postgres", "POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"),
        ("mariadb", "MARIADB_USER", "MARIADB_DATABASE", "MARIADB_PASSWORD"),
    ],
)
def test_compose_database_credentials_match_and_stay_off_command_lines(
    services: dict[str, Any], name: str, user_var: str, db_var: str, password_var: str
) -> None:
    gearstore_name = next(n for n, v in VARIANTS.items() if v[1] == name)
    gearstore = services[gearstore_name]
    backend_env = services[name]["environment"]
    argv, env = effective(gearstore)
    config = parse_args(argv, env)[0]
    # the same host variable feeds the database and gearstore
    assert backend_env[password_var] == gearstore["environment"]["GEARSTORE_DB_PASSWORD"]
    assert "${GEARSTORE_DB_PASSWORD" in backend_env[password_var]
    password = interpolate(backend_env[password_var], HOST_ENV)
    url = config.db or ""
    assert password not in url, "the password comes from GEARSTORE_DB_PASSWORD"
    assert f"//{backend_env[user_var]}@" in url and url.endswith("/" + backend_env[db_var])
    assert config.resolved_db() == url.replace("@", f":{password}@", 1)
    for service in services.values():
        words = " ".join(map(str, service.get("command", [])))
        assert "password" not in words.lower() and password not in words.split()


def test_compose_mariadb_accepts_the_largest_job(services: dict[str, Any]) -> None:
    command = services["mariadb"]["command"]
    (packet,) = [c.split("=", 1)[1] for c in command if c.startswith("--max-allowed-packet=")]
    # PyMySQL sends binary data hex-encoded: two bytes on the wire per byte of data
    assert size(packet) > 2 * MAX_JOB_DATA


def test_compose_memcached_refuses_to_evict(services: dict[str, Any]) -> None:
    command = [str(c) for c in services["memcached"]["command"]]
    assert "-M" in command
    assert command[command.index("-m") + 1] == "1024"
    argv, env = effective(services["gearstore-memcached"])
    assert parse_args(argv, env)[0].db == "memcached:11211"


def test_compose_healthchecks_escape_dollars_for_the_shell(services: dict[str, Any]) -> None:
    for name, service in services.items():
        test = " ".join(map(str, service.get("healthcheck", {}).get("test", [])))
        # a single $ would be compose interpolation, not the shell variable meant
        for match in re.finditer(r"(?<!\$)\$(?!\$)\{?(\w+)", test.replace("$$", "")):
            raise AssertionError(f"{name}: healthcheck uses ${match[1]}; write $${match[1]}")


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    compose: list[str] | None = None
    if docker is not None:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if plugin.returncode == 0:
            compose = [docker, "compose"]
    if compose is None and shutil.which("docker-compose"):
        compose = ["docker-compose"]  # Debian's standalone compose also validates profiles
    if compose is None:
        pytest.skip("neither docker compose nor docker-compose is installed")
    for profile in ([], ["--profile", "file"], ["--profile", "postgres"], ["--profile", "mysql"]):
        result = subprocess.run(
            [*compose, "-f", str(COMPOSE), *profile, "config", "--quiet"],
            capture_output=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("GEARSTORE_")},
        )
        assert result.returncode == 0, result.stderr.decode()


# ---------------------------------------------------------------------- systemd


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) for every line of the unit, repeats kept."""
    entries = []
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key: str) -> list[str]:
    return [value for section, k, value in unit_entries() if section == "Service" and k == key]


def test_systemd_unit_command_line_is_accepted_by_the_cli() -> None:
    env = dict(value.partition("=")[::2] for value in unit_values("Environment"))
    assert set(env) <= VALID_ENV
    (exec_start,) = unit_values("ExecStart")
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "gearstore"
    build_parser().parse_args(argv[1:])
    config, _ = parse_args(argv[1:], env)
    assert not config.daemon and config.pid_file is None, "systemd tracks the process"
    assert config.persistent
    assert unit_values("Type") in (["simple"], ["exec"])
    assert unit_values("User") and unit_values("User") != ["root"]
    assert unit_values("KillSignal") in ([], ["SIGTERM"])
    (timeout,) = unit_values("TimeoutStopSec")
    assert float(timeout) >= config.shutdown_timeout + 5
    assert (config.db or "").startswith("/var/lib/" + unit_values("StateDirectory")[0] + "/")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # verify wants ExecStart's program to exist: point it at this environment's script
    program = Path(sys.executable).with_name("gearstore")
    if not program.exists():
        program = Path(sys.executable)
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={program}", UNIT.read_text())
    unit = tmp_path / "gearstore.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, timeout=120)
    complaints = [
        line for line in result.stderr.decode().splitlines() if "gearstore.service" in line
    ]
    assert result.returncode == 0 and not complaints, result.stderr.decode()


# -------------------------------------------------------------- deployment.md


def doc_code_lines() -> Iterator[str]:
    inside = False
    for line in DEPLOYMENT_DOC.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            yield line.strip()
    yield from re.findall(r"`(docker compose [^`]+)`", DEPLOYMENT_DOC.read_text())


def test_deployment_doc_compose_commands_name_real_profiles_and_services(
    services: dict[str, Any],
) -> None:
    seen = 0
    for line in doc_code_lines():
        if not line.startswith("docker compose "):
            continue
        words = shlex.split(line)
        profile = words[words.index("--profile") + 1] if "--profile" in words else None
        if profile:
            assert any(profile in s.get("profiles", []) for s in services.values()), line
        if "up" in words:
            named = [w for w in words[words.index("up") + 1 :] if not w.startswith("-")]
            for name in named:
                assert name in services, line
                assert services[name].get("profiles") in (None, [profile]), line
            seen += 1
    assert seen >= len(VARIANTS)


def test_deployment_doc_gearstore_commands_parse() -> None:
    for line in doc_code_lines():
        if line.startswith("gearstore ") and not line.startswith("gearstore db"):
            build_parser().parse_args(shlex.split(line.split("#")[0])[1:])


def test_deployment_doc_kubernetes_example_is_consistent() -> None:
    text = DEPLOYMENT_DOC.read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", text, re.S)
    documents = [d for d in yaml.safe_load_all(block) if d]
    (statefulset,) = [d for d in documents if d["kind"] == "StatefulSet"]
    spec = statefulset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(env) <= VALID_ENV
    config, _ = parse_args(container["args"], {**image_env(), **env})
    assert spec["terminationGracePeriodSeconds"] >= config.shutdown_timeout + 5
    assert container["ports"][0]["containerPort"] == config.port
    assert container["readinessProbe"]
    assert spec["securityContext"]["runAsUser"] == int(
        instructions(final_stage(), "USER")[0].split(":")[0]
    )
    mount = container["volumeMounts"][0]["mountPath"]
    assert (config.db or "").startswith(mount + "/")
