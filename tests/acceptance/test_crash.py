"""kill -9 under load, on every store: no acknowledged job is lost or duplicated.

Each round runs a real ``gearstore`` process with several client connections
submitting background jobs (pipelined and one at a time, all priorities, unique keys,
reduce jobs, epoch jobs an hour ahead), a worker completing jobs and one holding jobs
unfinished, and SIGKILLs the server at a random moment. The server is restarted on the
same store and port and judged by :func:`tests.acceptance.replay.check_replay`.

Set GEARSTORE_CRASH_SEED to replay a failing run's kill times (the seed is in every
assertion message).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

import pytest

from gearstore.client import Client
from tests.acceptance.conftest import ALL_BACKENDS, Backend
from tests.acceptance.gearstore_process import GearstoreProcess
from tests.acceptance.ledger import Job, Ledger
from tests.acceptance.replay import EPOCH_FUNCTION, check_replay
from tests.acceptance.traffic import (
    HOST,
    IO_TIMEOUT,
    Load,
    Mix,
    completer,
    holder,
    pipelined_submitter,
    single_submitter,
    submit,
)
from tests.fixtures.server import free_port

ROUNDS = 3
#: the kill lands uniformly within this many seconds of the load starting
LOAD_SECONDS = 1.5
HELD = 5
DRAINED = [b"q", b"c", b"r", b"f"]


def crash_seed() -> int:
    """GEARSTORE_CRASH_SEED, or a fresh random seed."""
    return int(os.environ.get("GEARSTORE_CRASH_SEED") or random.randrange(2**32))


def start_load(port: int, ledger: Ledger, seed: int) -> Load:
    """Holder first (its jobs must be running when the kill comes), then the rest."""
    load = Load()
    load.spawn(holder, port, ledger, b"r", HELD)
    deadline = time.monotonic() + 10
    while sum(job.held for job in ledger) < HELD:
        assert not load.errors, load.errors
        assert time.monotonic() < deadline, "the holder could not grab its jobs"
        time.sleep(0.005)
    mixed = Mix(functions=(b"q", b"c"), unique_every=3, reduce_every=17, big_every=97)
    load.spawn(pipelined_submitter, port, ledger, mixed, seed + 1, 25, 3000)
    singles = Mix(functions=(b"q", b"c"), unique_every=4, epoch_every=40)
    load.spawn(single_submitter, port, ledger, singles, seed + 2, 1500, 0.0)
    load.spawn(single_submitter, port, ledger, Mix(functions=(b"q",)), seed + 3, 1500, 0.0)
    load.spawn(completer, port, ledger, b"c", b"f")
    return load


@pytest.mark.slow
@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_kill_9_under_load_loses_no_acknowledged_job(
    backend: Backend, gearstore: Callable[..., GearstoreProcess]
) -> None:
    seed = crash_seed()
    rng = random.Random(seed)
    port = free_port()
    server = gearstore(*backend.args, port=port)
    carried: list[Job] = []
    totals = {"acked": 0, "maybe_back": 0, "never_back": 0}
    for round_no in range(ROUNDS):
        ledger = Ledger(f"r{round_no}")
        ledger.adopt(carried)
        load = start_load(port, ledger, seed + 10 * round_no)
        crash_at = rng.uniform(0.0, LOAD_SECONDS)
        time.sleep(crash_at)
        load.server_gone.set()
        server.kill()
        load.stop()

        server = gearstore(*backend.args, port=port)
        context = f"{backend.name} seed={seed} round={round_no} kill at {crash_at:.2f}s"
        report = check_replay(port, ledger, DRAINED, context)
        assert report.expected_once >= HELD, context
        held_back = [j for j in ledger if j.held and report.counts[j.data] == 1]
        assert len(held_back) == HELD, f"{context}: running jobs did not all come back"
        totals["acked"] += report.expected_once
        totals["maybe_back"] += report.maybe_back
        totals["never_back"] += report.never_back

        # the drain's removals become durable with this acknowledged submit, so they
        # cannot come back in the next round; the fence job itself must come back then
        carried = [job for job in ledger if job.function == EPOCH_FUNCTION]
        with Client(HOST, port, timeout=IO_TIMEOUT) as client:
            fence = submit(client, Job(b"fence-after-round-%d" % round_no, b"f"))
        assert fence.acked, fence.refused
        carried.append(fence)

    assert server.terminate() == 0, server.log_text()
    print(f"{backend.name}: seed {seed}, {ROUNDS} kills, {totals}")
