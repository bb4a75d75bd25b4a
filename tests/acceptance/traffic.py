"""Client and worker traffic for the acceptance tests, recorded in a :class:`Ledger`.

Every connection runs in its own thread with a socket timeout, so no test can hang on
a server that died or stopped answering. A thread that loses its connection (the
server was killed) just ends; any other exception is kept and re-raised by
:meth:`Load.stop`, so a broken harness fails the test instead of hiding a bug.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gearstore.client import SUBMIT_TYPES, Client, Connection, GearmanError, Worker
from gearstore.protocol.codec import encode_request
from gearstore.protocol.packets import Packet
from gearstore.protocol.packets import PacketType as T
from tests.acceptance.ledger import PRIORITIES, Completion, Job, Ledger

HOST = "127.0.0.1"
#: seconds any single read may take before the harness calls the server hung
IO_TIMEOUT = 10.0


def is_lost(exc: BaseException) -> bool:
    """True for the errors a client sees when the server process goes away."""
    if isinstance(exc, GearmanError):
        return exc.code == b"LOST_CONNECTION"
    return isinstance(exc, OSError)


class Load:
    """Threads generating traffic until :meth:`stop` (or until the server dies)."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        #: set when the test killed or stopped the server: lost connections are expected
        self.server_gone = threading.Event()

    def spawn(self, target: Callable[..., None], *args: object) -> None:
        """Run ``target(self, *args)`` in a daemon thread."""

        def run() -> None:
            try:
                target(self, *args)
            except BaseException as exc:
                if not (is_lost(exc) and self.server_gone.is_set()):
                    self.errors.append(exc)

        thread = threading.Thread(target=run, name=getattr(target, "__name__", "load"))
        thread.daemon = True
        thread.start()
        self.threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every thread, wait for them, and re-raise the first unexpected error."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"load threads did not stop within {timeout} s: {alive}"
        if self.errors:
            raise AssertionError(f"load thread failed: {self.errors[0]!r}") from self.errors[0]


# ------------------------------------------------------------------ submitting


def _submit_packet(job: Job) -> bytes:
    if job.when is not None:
        return encode_request(
            T.SUBMIT_JOB_EPOCH, job.function, job.unique, str(job.when).encode(), job.data
        )
    if job.reducer is not None:
        return encode_request(
            T.SUBMIT_REDUCE_JOB_BACKGROUND, job.function, job.unique, job.reducer, b"", job.data
        )
    return encode_request(SUBMIT_TYPES[(job.priority, True)], job.function, job.unique, job.data)


def read_answer(conn: Connection, job: Job) -> None:
    """Read the server's answer to one background submit into ``job``."""
    packet = conn.read_any()
    job.answered_at = time.monotonic()
    if packet.type == T.JOB_CREATED:
        job.handle = packet.args[0]
        job.acked = True
    elif packet.type == T.ERROR:
        job.refused = packet.args[0] + b": " + packet.args[1]
    else:
        raise AssertionError(f"expected JOB_CREATED or ERROR, got {packet!r} for {job.describe()}")


def submit(conn: Connection, job: Job) -> Job:
    """Submit one background job and wait for its answer (timed in ``job.seconds``)."""
    started = time.monotonic()
    conn.send_raw(_submit_packet(job))
    read_answer(conn, job)
    job.seconds = time.monotonic() - started
    return job


def submit_pipelined(conn: Connection, jobs: Sequence[Job]) -> None:
    """Send every submit in one write, then read the answers (which come in order)."""
    conn.send_raw(b"".join(_submit_packet(job) for job in jobs))
    for job in jobs:
        read_answer(conn, job)


@dataclass
class Mix:
    """What a submitter sends: functions to pick from and how often to add a twist."""

    functions: Sequence[bytes] = (b"q",)
    unique_every: int = 3  # every n-th job gets a unique key
    reduce_every: int = 0  # every n-th job is a SUBMIT_REDUCE_JOB_BACKGROUND
    epoch_every: int = 0  # every n-th job is an epoch job an hour ahead (function "e")
    big_every: int = 0  # every n-th job carries 20 KiB of data


def _make(ledger: Ledger, mix: Mix, rng: random.Random, n: int) -> Job:
    if mix.epoch_every and n % mix.epoch_every == 0:
        return ledger.new(b"e", unique=True, when=int(time.time()) + 3600)
    if mix.reduce_every and n % mix.reduce_every == 0:
        return ledger.new(rng.choice(mix.functions), unique=True, reducer=b"sum")
    return ledger.new(
        rng.choice(mix.functions),
        rng.choice(PRIORITIES),
        unique=bool(mix.unique_every) and n % mix.unique_every == 0,
        pad=20_000 if mix.big_every and n % mix.big_every == 0 else rng.randrange(64),
    )


def pipelined_submitter(
    load: Load, port: int, ledger: Ledger, mix: Mix, seed: int, batch: int, max_jobs: int
) -> None:
    """Pipeline batches of submits with mixed priorities until stopped or ``max_jobs``."""
    rng = random.Random(seed)
    made = 0
    with Client(HOST, port, timeout=IO_TIMEOUT) as conn:
        while not load.stopping.is_set() and made < max_jobs:
            jobs = [_make(ledger, mix, rng, made + i + 1) for i in range(rng.randint(1, batch))]
            made += len(jobs)
            submit_pipelined(conn, jobs)
            time.sleep(rng.uniform(0, 0.01))


def single_submitter(
    load: Load, port: int, ledger: Ledger, mix: Mix, seed: int, max_jobs: int, pause: float
) -> None:
    """Submit one job at a time, waiting for each answer, until stopped or ``max_jobs``."""
    rng = random.Random(seed)
    with Client(HOST, port, timeout=IO_TIMEOUT) as conn:
        for n in range(1, max_jobs + 1):
            if load.stopping.is_set():
                return
            submit(conn, _make(ledger, mix, rng, n))
            if pause:
                time.sleep(pause)


def completer(load: Load, port: int, ledger: Ledger, function: bytes, fence: bytes) -> None:
    """Finish jobs of ``function`` a few at a time, then prove their removal durable.

    After WORK_COMPLETE, an ECHO on the same connection proves the server processed
    the completions (a connection's packets are handled in order); the server queued
    their removals then. A background submit acknowledged after that is in the same
    store batch as those removals or a later one, and batches are written in order, so
    once it is acknowledged the removals are durable too: the jobs become DURABLE.
    """
    with (
        Worker(HOST, port, timeout=IO_TIMEOUT) as worker,
        Client(HOST, port, timeout=IO_TIMEOUT) as client,
    ):
        worker.can_do(function)
        while not load.stopping.is_set():
            got: list[tuple[Packet, Job]] = []
            for _ in range(4):
                packet = worker.grab(T.GRAB_JOB_UNIQ)
                if packet is None:
                    break
                job = ledger.get(packet.args[3])
                assert job is not None, f"worker got a job nobody submitted: {packet!r}"
                got.append((packet, job))
            if not got:
                time.sleep(0.005)
                continue
            for packet, job in got:
                job.completion = Completion.SENT
                worker.complete(packet.args[0])
            worker.send(T.ECHO_REQ, b"fence")
            assert worker.read().type == T.ECHO_RES
            for _, job in got:
                job.completion = Completion.PROCESSED
            barrier = submit(client, ledger.new(fence))
            if not barrier.acked:
                continue  # store trouble: the removals stay "sent", not durable
            for _, job in got:
                job.completion = Completion.DURABLE


def holder(load: Load, port: int, ledger: Ledger, function: bytes, count: int) -> None:
    """Submit ``count`` jobs, grab them and never finish them (they are running at a
    crash), holding the connection until stopped."""
    with Client(HOST, port, timeout=IO_TIMEOUT) as client:
        jobs = [ledger.new(function, PRIORITIES[i % 3]) for i in range(count)]
        submit_pipelined(client, jobs)
    with Worker(HOST, port, timeout=IO_TIMEOUT) as worker:
        worker.can_do(function)
        for _ in range(count):
            packet = worker.grab(T.GRAB_JOB_UNIQ)
            assert packet is not None, "holder found no job to hold"
            job = ledger.get(packet.args[3])
            assert job is not None
            job.held = True
        load.stopping.wait()


def foreground_worker(load: Load, port: int, function: bytes) -> None:
    """Answer every job of ``function`` with its data reversed, until stopped."""
    with Worker(HOST, port, timeout=IO_TIMEOUT) as worker:
        worker.can_do(function)
        while not load.stopping.is_set():
            packet = worker.grab()
            if packet is None:
                time.sleep(0.005)
                continue
            worker.complete(packet.args[0], packet.args[2][::-1])


# ------------------------------------------------------------ inspecting state


def statuses(port: int, handles: Iterable[bytes]) -> dict[bytes, tuple[bool, bool]]:
    """GET_STATUS for many handles, pipelined: handle -> (known, running)."""
    wanted = list(dict.fromkeys(handles))
    out: dict[bytes, tuple[bool, bool]] = {}
    with Client(HOST, port, timeout=IO_TIMEOUT) as conn:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            conn.send_raw(b"".join(encode_request(T.GET_STATUS, h) for h in chunk))
            for handle in chunk:
                packet = conn.read()
                assert packet.type == T.STATUS_RES and packet.args[0] == handle, packet
                out[handle] = (packet.args[1] == b"1", packet.args[2] == b"1")
    return out


@dataclass(frozen=True)
class Assignment:
    """One job handed to the draining worker (JOB_ASSIGN_ALL)."""

    handle: bytes
    function: bytes
    unique: bytes
    reducer: bytes
    data: bytes

    @property
    def job_id(self) -> int:
        """The numeric id at the end of the handle."""
        return int(self.handle.rsplit(b":", 1)[1])


def drain(port: int, functions: Iterable[bytes], limit: int = 200_000) -> list[Assignment]:
    """Grab and complete every queued job of ``functions``; returns them in grab order.

    Grabs are pipelined 200 at a time; the completions follow, and a final ECHO makes
    sure the server has processed them before this returns.
    """
    out: list[Assignment] = []
    with Worker(HOST, port, timeout=IO_TIMEOUT) as worker:
        worker.can_do(*functions)
        while len(out) < limit:
            worker.send_raw(encode_request(T.GRAB_JOB_ALL) * 200)
            got: list[Assignment] = []
            empty = False
            for _ in range(200):
                packet = worker.read()
                if packet.type == T.NO_JOB:
                    empty = True
                    continue
                if packet.type == T.NOOP:
                    continue
                assert packet.type == T.JOB_ASSIGN_ALL, packet
                got.append(Assignment(*packet.args))
            if got:
                worker.send_raw(
                    b"".join(encode_request(T.WORK_COMPLETE, a.handle, b"") for a in got)
                )
            out.extend(got)
            if empty and not got:
                break
        worker.send(T.ECHO_REQ, b"drained")
        assert worker.read().type == T.ECHO_RES
    return out
