"""Judge a restarted server against a :class:`Ledger`: did replay bring back exactly
what was promised, with its handle, priority, order, unique key, reducer and epoch time?

:func:`check_replay` runs before anything new is submitted to the restarted server, so
every handle it asks about can only name a replayed job.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from gearstore.client import Client, admin
from tests.acceptance.ledger import PRIORITY_RANK, Expect, Job, Ledger
from tests.acceptance.traffic import HOST, IO_TIMEOUT, Assignment, drain, statuses, submit

EPOCH_FUNCTION = b"e"


@dataclass
class ReplayReport:
    """What came back, for assertions specific to one test."""

    drained: list[Assignment]
    counts: Counter[bytes] = field(default_factory=Counter)  # data -> times drained
    expected_once: int = 0
    maybe_back: int = 0  # jobs allowed but not required to come back that did
    never_back: int = 0  # jobs whose removal was durable (they did not come back)
    epoch_scheduled: int = 0


def priority_status(port: int) -> dict[bytes, tuple[int, int, int]]:
    """``prioritystatus``: function -> queued (high, normal, low), functions with a
    queued job only (a function can exist with nothing queued, e.g. epoch jobs only)."""
    out: dict[bytes, tuple[int, int, int]] = {}
    for line in admin(HOST, port, "prioritystatus"):
        name, high, normal, low, _workers = line.split("\t")
        if int(high) or int(normal) or int(low):
            out[name.encode()] = (int(high), int(normal), int(low))
    return out


def status_totals(port: int) -> dict[bytes, tuple[int, int]]:
    """``status``: function -> (total incl. scheduled, running)."""
    out: dict[bytes, tuple[int, int]] = {}
    for line in admin(HOST, port, "status"):
        name, total, running, _workers = line.split("\t")
        out[name.encode()] = (int(total), int(running))
    return out


def check_replay(
    port: int, ledger: Ledger, functions: list[bytes], context: str, clean_stop: bool = False
) -> ReplayReport:
    """Assert the restarted server at ``port`` holds what ``ledger`` promised; drain it.

    ``functions`` are drained (epoch jobs, an hour ahead, are checked but not run).
    ``context`` (seed, round, crash time) goes into every assertion message;
    ``clean_stop`` says the server exited on SIGTERM (see :meth:`Job.expect`).
    """
    jobs = list(ledger)
    epoch = [job for job in jobs if job.function == EPOCH_FUNCTION]
    others = [job for job in jobs if job.function != EPOCH_FUNCTION]

    # 1. pre-restart handles still answer GET_STATUS (known, not running: replay requeues)
    handles = [job.handle for job in jobs if job.handle is not None]
    status = statuses(port, handles)
    for job in jobs:
        if job.handle is None:
            continue
        known, running = status[job.handle]
        if job.expect(clean_stop) is Expect.ONCE:
            assert known and not running, (
                f"{context}: GET_STATUS {known=} {running=} for {job.describe()}"
            )
        elif job.expect(clean_stop) is Expect.NEVER:
            assert not known, f"{context}: completed job is known again: {job.describe()}"

    # 2. queue depth per priority, before anything is taken out
    queued_before = priority_status(port)

    # 3. unique keys coalesce with the replayed job: same handle, no new job
    dup_checked = 0
    with Client(HOST, port, timeout=IO_TIMEOUT) as client:
        for job in others:
            if job.unique and job.reducer is None and job.expect(clean_stop) is Expect.ONCE:
                again = submit(
                    client, Job(b"dup-" + job.data, job.function, job.priority, job.unique)
                )
                assert again.handle == job.handle, (
                    f"{context}: resubmitting unique {job.unique!r} gave {again.handle!r}, "
                    f"not the replayed job's handle: {job.describe()}"
                )
                dup_checked += 1
                if dup_checked >= 100:
                    break
        # epoch jobs: acknowledged ones coalesce; unanswered ones are made certain here,
        # so a later round knows exactly which epoch jobs exist
        for job in epoch:
            again = submit(
                client, Job(b"dup-" + job.data, job.function, unique=job.unique, when=job.when)
            )
            assert again.acked, f"{context}: epoch resubmit refused: {again.refused!r}"
            if job.acked:
                assert again.handle == job.handle, (
                    f"{context}: epoch job not replayed: {job.describe()}"
                )
            job.handle, job.acked = again.handle, True
    queued_after = priority_status(port)
    assert queued_after == queued_before, (
        f"{context}: unique resubmits created jobs: {queued_before} -> {queued_after}"
    )

    # 4. epoch jobs are scheduled, not queued and not run early
    totals = status_totals(port)
    if epoch:
        assert totals.get(EPOCH_FUNCTION, (0, 0))[0] == len(epoch), (
            f"{context}: {totals.get(EPOCH_FUNCTION)} epoch jobs, expected {len(epoch)}"
        )
        assert sum(queued_before.get(EPOCH_FUNCTION, (0, 0, 0))) == 0, (
            f"{context}: epoch jobs an hour ahead are queued: {queued_before[EPOCH_FUNCTION]}"
        )
    drained = drain(port, [*functions, EPOCH_FUNCTION])

    # 5. what came back, and how often
    report = ReplayReport(drained, Counter(a.data for a in drained), epoch_scheduled=len(epoch))
    for a in drained:
        found = ledger.get(a.data)
        assert found is not None, f"{context}: replay invented a job: {a!r}"
        job = found
        assert job.function != EPOCH_FUNCTION, f"{context}: epoch job ran early: {job.describe()}"
        assert (a.function, a.unique, a.reducer or None) == (
            job.function,
            job.unique,
            job.reducer,
        ), f"{context}: replayed job differs: {a!r} vs {job.describe()}"
        if job.handle is not None:
            assert a.handle == job.handle, f"{context}: handle changed: {a!r} vs {job.describe()}"
    for job in others:
        times = report.counts[job.data]
        expect = job.expect(clean_stop)
        if expect is Expect.ONCE:
            report.expected_once += 1
            assert times == 1, (
                f"{context}: acknowledged job came back {times} times: {job.describe()}"
            )
        elif expect is Expect.NEVER:
            report.never_back += 1
            assert times == 0, f"{context}: durably completed job came back: {job.describe()}"
        else:
            assert times <= 1, f"{context}: job came back {times} times: {job.describe()}"
            report.maybe_back += times

    # 6. priority and order: per function, high before normal before low, ids ascending
    #    within a priority; the queue depths match what was drained
    by_function: dict[bytes, list[Assignment]] = defaultdict(list)
    for a in drained:
        by_function[a.function].append(a)
    for function, grabbed in by_function.items():
        keys = [(PRIORITY_RANK[_job(ledger, a).priority], a.job_id) for a in grabbed]
        assert keys == sorted(keys), f"{context}: {function!r} replayed out of order: {keys[:50]}"
        per_priority = Counter(_job(ledger, a).priority for a in grabbed)
        depth = (per_priority["high"], per_priority["normal"], per_priority["low"])
        assert queued_before.get(function) == depth, (
            f"{context}: prioritystatus {function!r} said {queued_before.get(function)}, "
            f"drained {depth}"
        )
    return report


def _job(ledger: Ledger, a: Assignment) -> Job:
    job = ledger.get(a.data)
    assert job is not None
    return job
