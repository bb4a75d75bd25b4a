"""The C ``gearman`` and ``gearadmin`` programs (package gearman-tools) against gearstore.

The ``gearman`` scenarios run twice, against gearstore and against the reference C
gearmand, with the same expectations: a scenario that passes on gearmand and fails on
gearstore is a gearstore bug, not a wrong expectation. Every program runs with a
subprocess timeout and every background program is killed at teardown.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gearstore import __version__
from gearstore.client import Client, Worker, admin, parse_status
from tests.fixtures.server import ServerThread
from tests.tools import Gearmand, Spawned, Spawner, exchange, req, run, tool, wait_for

pytestmark = pytest.mark.needs_tool("gearman")

HOST = "127.0.0.1"


@pytest.fixture
def gearman() -> str:
    """Path of the C gearman client/worker program."""
    return tool("gearman", "gearman-tools")


@pytest.fixture
def gearadmin() -> str:
    """Path of gearadmin."""
    return tool("gearadmin", "gearman-tools")


@pytest.fixture(params=["gearstore", "gearmand"])
def port(
    request: pytest.FixtureRequest,
    server_factory: Callable[..., ServerThread],
    tmp_path: Path,
) -> int:
    """A server to run the scenario against: gearstore, or the reference gearmand."""
    if request.param == "gearstore":
        return server_factory().port
    reference = Gearmand(tmp_path).start()
    request.addfinalizer(reference.stop)
    return reference.port


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    """Start background programs; all are killed when the test ends."""
    spawner = Spawner(tmp_path)
    yield spawner
    spawner.close()


def status(port: int) -> dict[str, tuple[int, int, int]]:
    """function -> (total, running, workers) from the admin `status` command."""
    return parse_status(admin(HOST, port, "status"))


def client(gearman: str, port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the gearman client to completion (it exits 0 even on errors: check stdout)."""
    return run([gearman, "-h", HOST, "-p", str(port), *args], timeout=30)


def worker(spawn: Spawner, gearman: str, port: int, *args: str) -> Spawned:
    """Start a `gearman -w` worker in the background."""
    return spawn(gearman, "-w", "-h", HOST, "-p", str(port), *args)


def append_to(path: Path) -> tuple[str, ...]:
    """A worker command that appends each job's data, one line per job, to ``path``."""
    return ("sh", "-c", f"cat >> {path}; echo >> {path}")


def test_foreground_job_through_a_gearman_worker(gearman: str, port: int, spawn: Spawner) -> None:
    upper = worker(spawn, gearman, port, "-c", "1", "-f", "upper", "--", "tr", "a-z", "A-Z")
    done = client(gearman, port, "-f", "upper", "hello world")
    assert done.stdout == b"HELLO WORLD", done.stderr
    assert upper.wait() == 0  # -c 1: exactly one job reached it
    assert status(port)["upper"] == (0, 0, 0)


def test_background_jobs_queue_then_drain(
    gearman: str, port: int, spawn: Spawner, tmp_path: Path
) -> None:
    for n in range(3):
        submitted = client(gearman, port, "-b", "-f", "bg", f"job-{n}")
        assert submitted.stdout == b"" and submitted.stderr == b"", submitted
    assert status(port)["bg"] == (3, 0, 0)
    assert len(admin(HOST, port, "show jobs")) == 3
    out = tmp_path / "ran.txt"
    drain = worker(spawn, gearman, port, "-c", "3", "-f", "bg", "--", *append_to(out))
    assert drain.wait() == 0
    assert out.read_text().splitlines() == ["job-0", "job-1", "job-2"]
    assert status(port)["bg"] == (0, 0, 0)


def test_priorities_run_high_normal_low(
    gearman: str, port: int, spawn: Spawner, tmp_path: Path
) -> None:
    # submitted worst first, with no worker connected yet
    for flags, data in ((["-L"], "low"), ([], "normal"), (["-I"], "high")):
        client(gearman, port, "-b", *flags, "-f", "prio", data)
    assert admin(HOST, port, "prioritystatus") == ["prio\t1\t1\t1\t0"]
    out = tmp_path / "order.txt"
    drain = worker(spawn, gearman, port, "-c", "3", "-f", "prio", "--", *append_to(out))
    assert drain.wait() == 0
    assert out.read_text().splitlines() == ["high", "normal", "low"]


def test_unique_key_coalesces_background_jobs(gearman: str, port: int) -> None:
    for _ in range(2):
        client(gearman, port, "-b", "-u", "same-key", "-f", "uq", "payload")
    assert status(port)["uq"] == (1, 0, 0)
    assert admin(HOST, port, "show unique jobs") == ["same-key"]


def test_unique_key_coalesces_waiting_clients(
    gearman: str, port: int, spawn: Spawner, tmp_path: Path
) -> None:
    args = [gearman, "-h", HOST, "-p", str(port), "-u", "shared", "-f", "fg", "payload"]
    first, second = spawn(*args), spawn(*args)

    def waiting_clients() -> bool:
        reply, _ = exchange(port, req(41, b"shared"))  # GET_STATUS_UNIQUE
        return reply.endswith(b"\x002")  # last field: clients waiting for the job

    wait_for(waiting_clients, "two clients waiting on unique key 'shared'")
    assert status(port)["fg"] == (1, 0, 0)
    marker = tmp_path / "runs.txt"
    upper_and_mark = ("sh", "-c", f"tr a-z A-Z; echo ran >> {marker}")
    once = worker(spawn, gearman, port, "-c", "1", "-f", "fg", "--", *upper_and_mark)
    assert first.wait() == 0 and second.wait() == 0
    assert first.output == second.output == b"PAYLOAD"
    assert once.wait() == 0
    assert marker.read_text() == "ran\n"


def test_killed_worker_gives_the_job_back(
    gearman: str, port: int, spawn: Spawner, tmp_path: Path
) -> None:
    started = tmp_path / "started.txt"
    doomed = worker(
        spawn, gearman, port, "-f", "fragile", "--", "sh", "-c", f"echo >> {started}; sleep 60"
    )
    waiting = spawn(gearman, "-h", HOST, "-p", str(port), "-f", "fragile", "survives")
    wait_for(started.exists, "the first worker to start the job")
    assert status(port)["fragile"] == (1, 1, 1)
    doomed.kill()  # SIGKILL: the server only sees the connection drop
    wait_for(lambda: status(port)["fragile"] == (1, 0, 0), "the job to be queued again")
    rescue = worker(spawn, gearman, port, "-c", "1", "-f", "fragile", "--", "tr", "a-z", "A-Z")
    assert waiting.wait() == 0
    assert waiting.output == b"SURVIVES"
    assert rescue.wait() == 0
    assert started.read_text() == "\n"  # the doomed worker ran it once, and only once


def test_worker_with_several_functions(gearman: str, port: int, spawn: Spawner) -> None:
    both = worker(spawn, gearman, port, "-c", "2", "-f", "fa", "-f", "fb", "--", "tr", "a-z", "A-Z")
    wait_for(lambda: status(port).get("fb", (0, 0, 0))[2] == 1, "the worker to register")
    assert status(port)["fa"] == (0, 0, 1)
    names = [sorted(line.split(":", 1)[1].split()) for line in admin(HOST, port, "workers")]
    assert ["fa", "fb"] in names
    # one client, one job per -f; -P prefixes each result with its function
    done = client(gearman, port, "-P", "-f", "fa", "-f", "fb", "xy")
    assert sorted(re.findall(rb"(f[ab]): XY", done.stdout)) == [b"fa", b"fb"], done
    assert both.wait() == 0


def test_worker_streams_data_lines(gearman: str, port: int, spawn: Spawner) -> None:
    worker(
        spawn, gearman, port, "-c", "1", "-n", "-f", "lines", "--", "sh", "-c", "echo one; echo two"
    )
    done = client(gearman, port, "-f", "lines", "x")
    # `gearman -w -n` sends a WORK_DATA per line holding everything output so far
    # ("one\n", then "one\ntwo\n"); the client prints each packet's data
    assert done.stdout == b"one\none\ntwo\n"


# --------------------------------------------------------------------- gearadmin


def gearadmin_run(gearadmin: str, port: int, *args: str) -> str:
    """What gearadmin printed: replies on stdout, "Error: ..." on stderr (exit status 0)."""
    done = run([gearadmin, "-h", HOST, "-p", str(port), *args], timeout=30)
    assert done.returncode == 0, done
    return done.stdout.decode() + done.stderr.decode()


def test_gearadmin_reads_every_listing(gearadmin: str, server: ServerThread) -> None:
    port = server.port
    with Worker(port=port) as busy:
        busy.send(22, b"worker-7")  # SET_CLIENT_ID
        busy.can_do(b"listed")
        with Client(port=port) as submitter:
            high = submitter.submit_bg(b"listed", b"a", unique=b"key-a", priority="high")
            submitter.submit_bg(b"listed", b"b", unique=b"key-b", priority="low")
        assert gearadmin_run(gearadmin, port, "--status") == "listed\t2\t0\t1\n.\n"
        assert gearadmin_run(gearadmin, port, "--priority-status") == "listed\t1\t0\t1\t1\n.\n"
        workers = gearadmin_run(gearadmin, port, "--workers").splitlines()
        assert workers[-1] == "."
        assert any(re.fullmatch(r"\d+ 127\.0\.0\.1 worker-7 : listed", w) for w in workers)
        jobs = gearadmin_run(gearadmin, port, "--show-jobs").splitlines()
        assert sorted(jobs[:-1]) == [f"{high.decode()}\t0\t0\t1", "H:test:2\t0\t0\t1"]
        unique = gearadmin_run(gearadmin, port, "--show-unique-jobs").splitlines()
        assert sorted(unique[:-1]) == ["key-a", "key-b"]
        assert gearadmin_run(gearadmin, port, "--cancel-job", high.decode()) == "OK\n"
        assert (
            gearadmin_run(gearadmin, port, "--cancel-job", high.decode())
            == "Error: UNKNOWN_JOB\r\n"
        )
        assert gearadmin_run(gearadmin, port, "--status") == "listed\t1\t0\t1\n.\n"


def test_gearadmin_server_facts(gearadmin: str, server: ServerThread) -> None:
    assert gearadmin_run(gearadmin, server.port, "--server-version") == __version__ + "\n"
    assert gearadmin_run(gearadmin, server.port, "--getpid") == f"{os.getpid()}\n"
    assert gearadmin_run(gearadmin, server.port, "--server-verbose") == "INFO\n"


def test_gearadmin_creates_and_drops_functions(gearadmin: str, server: ServerThread) -> None:
    port = server.port
    assert gearadmin_run(gearadmin, port, "--create-function", "made-by-admin") == "OK\n"
    assert status(port)["made-by-admin"] == (0, 0, 0)
    assert gearadmin_run(gearadmin, port, "--drop-function", "made-by-admin") == "OK\n"
    assert "made-by-admin" not in status(port)
    # gearadmin prints the server's "ERR <text>\r\n" as "Error: <text>\r\n", \r included
    dropped_twice = gearadmin_run(gearadmin, port, "--drop-function", "made-by-admin")
    assert dropped_twice == "Error: function not found\r\n"
