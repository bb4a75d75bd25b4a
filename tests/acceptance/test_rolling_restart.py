"""Rolling restarts: SIGTERM the ``gearstore`` command under load, start it again on the
same store, and check that no acknowledged background job is lost or run twice.

The contract under test (docs/deployment.md, "Graceful restarts"): on SIGTERM the
server stops accepting, answers NO_JOB to workers, lets running jobs finish for up to
--shutdown-timeout seconds, writes the store and exits 0; a second SIGTERM ends the
wait at once without losing acknowledged jobs. Every job then runs exactly once, except
that a job still running when the server went away may run again (at least once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gearstore.client import Client, GearmanError, Worker, admin, parse_status
from tests.fixtures.server import ServerProcess, free_port

FUNCTION = b"rolling"


class RestartableProcess(ServerProcess):
    """ServerProcess whose start() closes the parent's copy of the log file.

    ServerProcess.start leaves it open, which is a ResourceWarning, i.e. an error under
    ``filterwarnings = error``.
    """

    def start(self, wait: bool = True, timeout: float = 60) -> RestartableProcess:
        """Start the process; wait until the port accepts connections."""
        assert self.log is not None
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gearstore", *self.args],
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send a signal without waiting."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        """The exit status, or fail with the log if the process is still running."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"gearstore still running {timeout} s later:\n{self.log_text()}"
            ) from None


Launcher = Callable[..., RestartableProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """``launch(*store_args, port=..., timeout=...)`` starts gearstore on one store."""
    started: list[RestartableProcess] = []

    def start(*args: str, port: int, shutdown_timeout: float = 30) -> RestartableProcess:
        log = tmp_path / f"gearstore-{len(started)}.log"
        timeout_args = ["--shutdown-timeout", str(shutdown_timeout)]
        proc = RestartableProcess([*args, *timeout_args], port=port, log=log)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


def _sql_store(request: pytest.FixtureRequest, kind: str) -> Iterator[list[str]]:
    from tests.dbservers import drop_tables, unique_table_name

    url = request.getfixturevalue(f"{kind}_url")
    table = unique_table_name(request.node.name)
    yield ["-q", kind, "--db", url, "--table", table]
    drop_tables(url, table)


@pytest.fixture(params=["sqlite", "file", "postgres", "mysql", "memcached"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """The gearstore flags for one store, empty at the start of the test."""
    kind = request.param
    if kind == "sqlite":
        yield ["-q", "sqlite", "--db", str(tmp_path / "queue.db")]
    elif kind == "file":
        yield ["-q", "file", "--db", str(tmp_path / "journal")]
    elif kind in ("postgres", "mysql"):
        yield from _sql_store(request, kind)
    else:
        address = request.getfixturevalue("memcached_address")
        yield ["-q", "memcached", "--db", address, "--prefix", f"gst-{uuid.uuid4().hex[:12]}"]


@pytest.fixture(params=["sqlite", "file"])
def local_store_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """Flags for a store that needs no server (the signal tests run on these)."""
    if request.param == "sqlite":
        return ["-q", "sqlite", "--db", str(tmp_path / "queue.db")]
    return ["-q", "file", "--db", str(tmp_path / "journal")]


# ------------------------------------------------------------------------- workers


@dataclass
class Ledger:
    """What the workers did, per job data, with monotonic timestamps."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    starts: dict[bytes, list[float]] = field(default_factory=dict)
    completions: dict[bytes, list[float]] = field(default_factory=dict)

    def started(self, data: bytes) -> None:
        with self.lock:
            self.starts.setdefault(data, []).append(time.monotonic())

    def completed(self, data: bytes) -> None:
        with self.lock:
            self.completions.setdefault(data, []).append(time.monotonic())

    def running(self) -> set[bytes]:
        """Jobs started more often than completed right now."""
        with self.lock:
            return {
                data
                for data, starts in self.starts.items()
                if len(starts) > len(self.completions.get(data, []))
            }

    def done(self) -> int:
        with self.lock:
            return len(self.completions)


class WorkerPool:
    """Worker threads that run FUNCTION jobs for ``job_seconds`` each and reconnect
    whenever the server goes away, as a production worker would."""

    def __init__(self, port: int, count: int, job_seconds: float) -> None:
        self.port = port
        self.job_seconds = job_seconds
        self.ledger = Ledger()
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self._session()
                except (OSError, GearmanError):
                    time.sleep(0.05)  # server restarting: reconnect
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def _session(self) -> None:
        with Worker("127.0.0.1", self.port, timeout=10) as worker:
            worker.can_do(FUNCTION)
            while not self.stopping.is_set():
                job = worker.grab()
                if job is None:
                    time.sleep(0.02)
                    continue
                handle, _, data = job.args[:3]
                self.ledger.started(data)
                time.sleep(self.job_seconds)
                # Recorded before the report is sent, so the main thread can never see
                # the server exit before it sees the job finish.
                self.ledger.completed(data)
                worker.complete(handle, b"done")

    def stop(self) -> None:
        """Stop the threads and re-raise anything unexpected they hit."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        if self.errors:
            raise self.errors[0]


def submit(port: int, datas: Sequence[bytes]) -> list[bytes]:
    """Background-submit every job; returns the handles (all acknowledged)."""
    with Client("127.0.0.1", port) as client:
        return client.submit_many_bg([(FUNCTION, b"", data) for data in datas])


def queued(port: int) -> tuple[int, int]:
    """(total, running) for FUNCTION from the admin ``status`` command."""
    status = parse_status(admin("127.0.0.1", port, "status"))
    total, running, _ = status.get(FUNCTION.decode(), (0, 0, 0))
    return total, running


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def drain_all(port: int, limit: int = 10_000) -> list[bytes]:
    """Grab and complete every queued FUNCTION job; returns their data."""
    with Worker("127.0.0.1", port) as worker:
        worker.can_do(FUNCTION)
        return [packet.args[2] for packet in worker.drain(limit)]


# ------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_rolling_restart_runs_every_job_once(
    launch: Launcher, store_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM with workers busy, restart on the same store, finish the queue."""
    port = free_port()
    jobs = [b"job-%03d" % n for n in range(45)]
    server = launch(*store_args, port=port)
    handles = submit(port, jobs)
    assert len(set(handles)) == len(jobs)

    pool = WorkerPool(port, count=3, job_seconds=0.15)
    try:
        wait_for(lambda: pool.ledger.done() >= 6, 60, "the first jobs to complete")
        wait_for(lambda: len(pool.ledger.running()) >= 2, 30, "jobs to be running")
        running_at_term = pool.ledger.running()
        term_sent = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(30) == 0, server.log_text()
        exited = time.monotonic()

        restarted_at = time.monotonic()
        server = launch(*store_args, port=port)
        ready = time.monotonic()
        wait_for(lambda: pool.ledger.done() == len(jobs), 60, "every job to complete")
        wait_for(lambda: queued(port) == (0, 0), 30, "the queue to empty")
    finally:
        pool.stop()

    ledger = pool.ledger
    assert set(ledger.completions) == set(jobs), "a job was lost"
    # running jobs were given the drain: each finished before the old server exited
    for data in running_at_term:
        assert ledger.completions[data][0] < exited, data
    # Exactly once, except jobs that may have been running while the server went away.
    maybe_running = {d for d, s in ledger.starts.items() if s[0] < exited} - {
        d for d, c in ledger.completions.items() if c[0] < term_sent
    }
    twice = {data for data, starts in ledger.starts.items() if len(starts) > 1}
    assert twice <= maybe_running, sorted(twice - maybe_running)

    # the removals are durable: a third start on the same store replays nothing
    assert server.terminate(30) == 0, server.log_text()
    server = launch(*store_args, port=port)
    assert queued(port) == (0, 0)
    assert server.terminate(30) == 0
    with capsys.disabled():
        print(
            f"\n[{store_args[1]}] {len(running_at_term)} running at SIGTERM, "
            f"drain+exit {exited - term_sent:.2f} s, restart {ready - restarted_at:.2f} s, "
            f"{len(twice)} job(s) ran twice"
        )


def test_sigterm_on_an_idle_server_exits_0_and_keeps_the_queue(
    launch: Launcher, local_store_args: list[str]
) -> None:
    port = free_port()
    server = launch(*local_store_args, port=port)
    jobs = [b"idle-%d" % n for n in range(20)]
    submit(port, jobs)
    started = time.monotonic()
    assert server.terminate(30) == 0, server.log_text()
    assert time.monotonic() - started < 10, "nothing was running: no reason to wait"
    launch(*local_store_args, port=port)
    assert queued(port) == (len(jobs), 0)
    assert sorted(drain_all(port)) == sorted(jobs)


def test_running_job_finishes_during_the_drain_and_is_not_run_again(
    launch: Launcher, local_store_args: list[str]
) -> None:
    port = free_port()
    server = launch(*local_store_args, port=port)
    jobs = [b"drain-%d" % n for n in range(10)]
    submit(port, jobs)
    with Worker("127.0.0.1", port) as worker:
        worker.can_do(FUNCTION)
        job = worker.grab()
        assert job is not None
        server.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.proc is not None and server.proc.poll() is None, "must wait for the job"
        assert worker.grab() is None, "no new work while stopping"
        worker.complete(job.args[0], b"ok")
        started = time.monotonic()
        assert server.wait_exit(10) == 0, server.log_text()
        assert time.monotonic() - started < 5, "the last running job finished: stop now"
    launch(*local_store_args, port=port)
    assert sorted(drain_all(port)) == sorted(set(jobs) - {job.args[2]})


def test_shutdown_timeout_bounds_the_wait_and_requeues_the_job(
    launch: Launcher, local_store_args: list[str]
) -> None:
    port = free_port()
    server = launch(*local_store_args, port=port, shutdown_timeout=1.5)
    jobs = [b"slow-%d" % n for n in range(5)]
    submit(port, jobs)
    with Worker("127.0.0.1", port) as worker:
        worker.can_do(FUNCTION)
        held = worker.grab()  # and never completed
        assert held is not None
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(30) == 0, server.log_text()
        waited = time.monotonic() - started
    assert 1.4 <= waited < 1.5 + 5, f"waited {waited:.2f} s for --shutdown-timeout 1.5"
    launch(*local_store_args, port=port)
    # the job that outlived the timeout was never completed: it runs again
    assert sorted(drain_all(port)) == sorted(jobs)


def test_second_sigterm_stops_at_once_without_losing_acknowledged_jobs(
    launch: Launcher, local_store_args: list[str]
) -> None:
    port = free_port()
    server = launch(*local_store_args, port=port, shutdown_timeout=60)
    jobs = [b"early-%d" % n for n in range(30)]
    with Client("127.0.0.1", port) as client:
        client.submit_many_bg([(FUNCTION, b"", data) for data in jobs])
        with Worker("127.0.0.1", port) as worker:
            worker.can_do(FUNCTION)
            held = worker.grab()  # keeps the server draining
            assert held is not None
            server.signal(signal.SIGTERM)
            time.sleep(0.5)
            assert server.proc is not None and server.proc.poll() is None
            # The listener is closed, but a connection that is already open may still
            # submit; whatever is acknowledged now must survive too.
            late = [b"late-%d" % n for n in range(5)]
            acknowledged = list(jobs)
            for data in late:
                try:
                    client.submit_bg(FUNCTION, data)
                except (GearmanError, OSError):
                    break
                acknowledged.append(data)
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            status = server.wait_exit(10)
            stopped_in = time.monotonic() - started
    assert status == 0, server.log_text()
    assert stopped_in < 3, f"second SIGTERM took {stopped_in:.1f} s"
    launch(*local_store_args, port=port)
    # the held job never completed, so it is still there along with every other
    assert sorted(drain_all(port)) == sorted(acknowledged)
