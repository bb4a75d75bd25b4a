"""Job engine semantics, driven directly (no sockets)."""

from __future__ import annotations

import pytest

from gearstore.engine.core import SubmitError
from gearstore.engine.model import GrabMode, JobState
from gearstore.protocol.packets import PacketType as T
from gearstore.stores.base import Priority, StoredJob
from tests.unit.engine_helpers import Harness, HeldPersister

N, H, L = Priority.NORMAL, Priority.HIGH, Priority.LOW


def test_submit_answers_job_created_with_prefixed_handle() -> None:
    h = Harness()
    client, peer = h.connect()
    job = h.engine.submit(client, b"f", b"", b"data")
    assert peer.take() == [(T.JOB_CREATED, (b"H:t:1",))]
    assert job.handle == b"H:t:1" and job.state == JobState.QUEUED


def test_priorities_then_fifo() -> None:
    h = Harness()
    client, _ = h.connect()
    for data, prio in [(b"n1", N), (b"l1", L), (b"h1", H), (b"n2", N), (b"h2", H), (b"l2", L)]:
        h.engine.submit(client, b"f", b"", data, prio, background=True)
    worker, wpeer = h.worker(b"f")
    order = []
    for _ in range(6):
        h.engine.grab(worker)
        order.append(wpeer.take()[0][1][2])
    assert order == [b"h1", b"h2", b"n1", b"n2", b"l1", b"l2"]
    h.engine.grab(worker)
    assert wpeer.types() == ["NO_JOB"]


def test_priority_wins_across_functions() -> None:
    h = Harness()
    client, _ = h.connect()
    h.engine.submit(client, b"a", b"", b"low-a", L, True)
    h.engine.submit(client, b"b", b"", b"high-b", H, True)
    worker, wpeer = h.worker(b"a", b"b")
    h.engine.grab(worker)
    assert wpeer.take()[0][1][2] == b"high-b"


def test_unique_coalesces_and_every_listener_gets_results() -> None:
    h = Harness()
    clients = [h.connect() for _ in range(1000)]
    handles = set()
    for session, peer in clients:
        job = h.engine.submit(session, b"thumb", b"img-1", b"payload")
        handles.add(job.handle)
    assert len(handles) == 1
    assert len(h.engine.jobs) == 1
    worker, wpeer = h.worker(b"thumb")
    h.engine.grab(worker)
    handle = wpeer.take()[0][1][0]
    h.engine.work_status(worker, handle, b"1", b"2")
    h.engine.work_complete(worker, handle, b"done")
    for _, peer in clients:
        assert peer.take() == [
            (T.JOB_CREATED, (handle,)),
            (T.WORK_STATUS, (handle, b"1", b"2")),
            (T.WORK_COMPLETE, (handle, b"done")),
        ]
    h.engine.grab(worker)
    assert wpeer.types() == ["NO_JOB"]


def test_empty_unique_never_coalesces_and_dash_uses_payload() -> None:
    h = Harness()
    c, _ = h.connect()
    a = h.engine.submit(c, b"f", b"", b"same", background=True)
    b = h.engine.submit(c, b"f", b"", b"same", background=True)
    assert a is not b
    d1 = h.engine.submit(c, b"f", b"-", b"payload", background=True)
    d2 = h.engine.submit(c, b"f", b"-", b"payload", background=True)
    d3 = h.engine.submit(c, b"f", b"-", b"other", background=True)
    assert d1 is d2 and d1 is not d3


def test_unique_is_per_function_and_freed_after_completion() -> None:
    h = Harness()
    c, _ = h.connect()
    a = h.engine.submit(c, b"f", b"u", b"x", background=True)
    assert h.engine.submit(c, b"g", b"u", b"x", background=True) is not a
    w, wp = h.worker(b"f")
    h.engine.grab(w)
    h.engine.work_complete(w, a.handle, b"")
    assert h.engine.submit(c, b"f", b"u", b"x", background=True) is not a


def test_grab_variants_carry_unique_and_reducer() -> None:
    h = Harness()
    c, _ = h.connect()
    h.engine.submit(c, b"f", b"u1", b"d1", background=True)
    h.engine.submit(c, b"f", b"u2", b"d2", background=True, reducer=b"red")
    w, wp = h.worker(b"f")
    h.engine.grab(w, GrabMode.UNIQ)
    assert wp.take() == [(T.JOB_ASSIGN_UNIQ, (b"H:t:1", b"f", b"u1", b"d1"))]
    h.engine.grab(w, GrabMode.ALL)
    assert wp.take() == [(T.JOB_ASSIGN_ALL, (b"H:t:2", b"f", b"u2", b"red", b"d2"))]


def test_pre_sleep_gets_noop_when_work_arrives_and_only_once() -> None:
    h = Harness()
    w, wp = h.worker(b"f")
    h.engine.pre_sleep(w)
    assert wp.take() == []
    c, _ = h.connect()
    h.engine.submit(c, b"f", b"", b"1", background=True)
    h.engine.submit(c, b"f", b"", b"2", background=True)
    assert wp.types() == ["NOOP"]


def test_pre_sleep_with_work_waiting_answers_noop_at_once() -> None:
    h = Harness()
    c, _ = h.connect()
    h.engine.submit(c, b"f", b"", b"1", background=True)
    w, wp = h.worker(b"f")
    h.engine.pre_sleep(w)
    assert wp.types() == ["NOOP"]


def test_worker_wakeup_limit() -> None:
    h = Harness(worker_wakeup=2)
    workers = [h.worker(b"f") for _ in range(5)]
    for session, _ in workers:
        h.engine.pre_sleep(session)
    c, _ = h.connect()
    h.engine.submit(c, b"f", b"", b"1", background=True)
    woken = sum(1 for _, peer in workers if peer.types() == ["NOOP"])
    assert woken == 2


def test_only_capable_workers_are_woken() -> None:
    h = Harness()
    wf, pf = h.worker(b"f")
    wg, pg = h.worker(b"g")
    h.engine.pre_sleep(wf)
    h.engine.pre_sleep(wg)
    c, _ = h.connect()
    h.engine.submit(c, b"g", b"", b"1", background=True)
    assert pf.take() == [] and pg.types() == ["NOOP"]


def test_round_robin_rotates_functions() -> None:
    h = Harness(round_robin=True)
    c, _ = h.connect()
    for _ in range(2):
        h.engine.submit(c, b"a", b"", b"a", background=True)
        h.engine.submit(c, b"b", b"", b"b", background=True)
    w, wp = h.worker(b"a", b"b")
    got = []
    for _ in range(4):
        h.engine.grab(w)
        got.append(wp.take()[0][1][1])
    assert got == [b"a", b"b", b"a", b"b"]


def test_without_round_robin_first_function_first() -> None:
    h = Harness()
    c, _ = h.connect()
    for _ in range(2):
        h.engine.submit(c, b"a", b"", b"a", background=True)
        h.engine.submit(c, b"b", b"", b"b", background=True)
    w, wp = h.worker(b"a", b"b")
    got = []
    for _ in range(4):
        h.engine.grab(w)
        got.append(wp.take()[0][1][1])
    assert got == [b"a", b"a", b"b", b"b"]


def test_cant_do_and_reset_abilities() -> None:
    h = Harness()
    c, _ = h.connect()
    h.engine.submit(c, b"f", b"", b"1", background=True)
    w, wp = h.worker(b"f", b"g")
    h.engine.cant_do(w, b"f")
    h.engine.grab(w)
    assert wp.types() == ["NO_JOB"]
    h.engine.can_do(w, b"f")
    h.engine.reset_abilities(w)
    h.engine.grab(w)
    assert wp.types() == ["NO_JOB"]
    assert not h.engine.functions[b"f"].workers


def test_work_packets_are_forwarded() -> None:
    h = Harness()
    c, cp = h.connect()
    job = h.engine.submit(c, b"f", b"", b"x")
    w, wp = h.worker(b"f")
    h.engine.grab(w)
    h.engine.work_update(w, T.WORK_DATA, job.handle, b"chunk")
    h.engine.work_update(w, T.WORK_WARNING, job.handle, b"careful")
    h.engine.work_fail(w, job.handle)
    assert [p for p, _ in cp.take()] == [T.JOB_CREATED, T.WORK_DATA, T.WORK_WARNING, T.WORK_FAIL]


def test_exception_goes_only_to_clients_that_asked() -> None:
    h = Harness()
    a, ap = h.connect()
    b, bp = h.connect()
    a.exceptions = True
    job = h.engine.submit(a, b"f", b"u", b"x")
    h.engine.submit(b, b"f", b"u", b"x")
    w, _ = h.worker(b"f")
    h.engine.grab(w)
    h.engine.work_exception(w, job.handle, b"boom")
    assert ap.take()[-1] == (T.WORK_EXCEPTION, (job.handle, b"boom"))
    assert bp.take()[-1] == (T.WORK_FAIL, (job.handle,))


def test_get_status_known_running_and_unknown() -> None:
    h = Harness()
    c, cp = h.connect()
    job = h.engine.submit(c, b"f", b"u", b"x", background=True)
    cp.take()
    h.engine.get_status(c, job.handle)
    assert cp.take() == [(T.STATUS_RES, (job.handle, b"1", b"0", b"0", b"0"))]
    w, _ = h.worker(b"f")
    h.engine.grab(w)
    h.engine.work_status(w, job.handle, b"3", b"10")
    h.engine.get_status(c, job.handle)
    assert cp.take() == [(T.STATUS_RES, (job.handle, b"1", b"1", b"3", b"10"))]
    h.engine.get_status(c, b"H:nope:1")
    assert cp.take() == [(T.STATUS_RES, (b"H:nope:1", b"0", b"0", b"0", b"0"))]


def test_get_status_unique_counts_listeners() -> None:
    h = Harness()
    (a, _), (b, _), (q, qp) = h.connect(), h.connect(), h.connect()
    h.engine.submit(a, b"f", b"key", b"x")
    h.engine.submit(b, b"f", b"key", b"x")
    h.engine.get_status_unique(q, b"key")
    assert qp.take() == [(T.STATUS_RES_UNIQUE, (b"key", b"1", b"0", b"0", b"0", b"2"))]
    h.engine.get_status_unique(q, b"other")
    assert qp.take() == [(T.STATUS_RES_UNIQUE, (b"other", b"0", b"0", b"0", b"0", b"0"))]


def test_worker_disconnect_requeues_at_front() -> None:
    h = Harness()
    c, _ = h.connect()
    first = h.engine.submit(c, b"f", b"", b"first", background=True)
    h.engine.submit(c, b"f", b"", b"second", background=True)
    w1, _ = h.worker(b"f")
    h.engine.grab(w1)
    h.engine.disconnect(w1)
    w2, wp2 = h.worker(b"f")
    h.engine.grab(w2)
    assert wp2.take()[0][1][0] == first.handle
    assert first.failures == 1


def test_job_retries_fails_after_n_attempts() -> None:
    persister = HeldPersister()
    h = Harness(persister, job_retries=2)
    c, cp = h.connect()
    job = h.engine.submit(c, b"f", b"", b"x")
    for _ in range(2):
        w, _ = h.worker(b"f")
        h.engine.grab(w)
        h.engine.disconnect(w)
    assert cp.take()[-1] == (T.WORK_FAIL, (job.handle,))
    assert job.state == JobState.DONE and job.handle not in h.engine.jobs


def test_can_do_timeout_requeues_and_drops_late_result() -> None:
    h = Harness()
    c, cp = h.connect()
    job = h.engine.submit(c, b"f", b"", b"x")
    slow, _ = h.worker(b"f", timeout=5)
    h.engine.grab(slow)
    assert h.timers == [5.0]
    h.clock.advance(4)
    h.engine.run_timers()
    assert job.state == JobState.RUNNING
    h.clock.advance(2)
    h.engine.run_timers()
    assert job.state == JobState.QUEUED
    fast, fp = h.worker(b"f")
    h.engine.grab(fast)
    assert fp.take()[0][1][0] == job.handle
    cp.take()
    h.engine.work_complete(slow, job.handle, b"late")
    assert cp.take() == []
    h.engine.work_complete(fast, job.handle, b"ok")
    assert cp.take() == [(T.WORK_COMPLETE, (job.handle, b"ok"))]


def test_epoch_job_waits_for_its_time_and_does_not_block_others() -> None:
    h = Harness()
    c, _ = h.connect()
    when = int(h.clock.now) + 60
    later = h.engine.submit(c, b"f", b"", b"later", background=True, when=when)
    h.engine.submit(c, b"f", b"", b"low-now", L, background=True)
    assert h.timers and 59 <= h.timers[-1] <= 60
    w, wp = h.worker(b"f")
    h.engine.pre_sleep(w)
    assert wp.types() == ["NOOP"]
    h.engine.grab(w)
    assert wp.take()[0][1][2] == b"low-now"
    h.engine.pre_sleep(w)
    h.engine.grab(w)
    assert wp.types() == ["NO_JOB"]
    h.engine.pre_sleep(w)
    h.clock.advance(61)
    assert h.engine.run_timers() is None
    assert wp.types() == ["NOOP"]
    h.engine.grab(w)
    assert wp.take()[0][1][0] == later.handle


def test_epoch_in_the_past_runs_now() -> None:
    h = Harness()
    c, _ = h.connect()
    job = h.engine.submit(c, b"f", b"", b"x", background=True, when=1)
    assert job.state == JobState.QUEUED


def test_abandoned_foreground_job_is_dropped() -> None:
    h = Harness()
    c, _ = h.connect()
    job = h.engine.submit(c, b"f", b"", b"x")
    h.engine.disconnect(c)
    assert job.state == JobState.DONE
    assert h.engine.functions[b"f"].total_queued == 0
    w, wp = h.worker(b"f")
    h.engine.grab(w)
    assert wp.types() == ["NO_JOB"]


def test_foreground_job_kept_while_another_listener_remains() -> None:
    h = Harness()
    a, _ = h.connect()
    b, _ = h.connect()
    job = h.engine.submit(a, b"f", b"u", b"x")
    h.engine.submit(b, b"f", b"u", b"x")
    h.engine.disconnect(a)
    assert job.state == JobState.QUEUED


def test_background_job_survives_client_disconnect() -> None:
    h = Harness()
    c, _ = h.connect()
    job = h.engine.submit(c, b"f", b"", b"x", background=True)
    h.engine.disconnect(c)
    assert job.state == JobState.QUEUED


def test_max_queue_refuses_with_queue_error() -> None:
    h = Harness()
    c, _ = h.connect()
    h.engine.set_max_queue(b"f", [1, 1, 1])
    h.engine.submit(c, b"f", b"", b"1", background=True)
    with pytest.raises(SubmitError) as info:
        h.engine.submit(c, b"f", b"", b"2", background=True)
    assert info.value.code == b"QUEUE_ERROR"
    h.engine.submit(c, b"f", b"", b"h", H, background=True)


def test_cancel_really_removes() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    c, _ = h.connect()
    job = h.engine.submit(c, b"f", b"", b"x", background=True)
    for j in list(persister.pending):
        h.engine.persisted(j)
    assert h.engine.cancel(job.handle)
    assert h.engine.functions[b"f"].total_queued == 0
    assert persister.forgotten == [job.id]
    assert not h.engine.cancel(job.handle)


# ---------------------------------------------------------------- persistence


def test_background_ack_waits_for_durability() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    c, cp = h.connect()
    w, wp = h.worker(b"f")
    h.engine.pre_sleep(w)
    job = h.engine.submit(c, b"f", b"", b"x", background=True)
    assert cp.take() == [] and wp.take() == []
    assert job.state == JobState.PENDING
    h.engine.persisted(persister.pending.pop())
    assert cp.take() == [(T.JOB_CREATED, (job.handle,))]
    assert wp.types() == ["NOOP"]


def test_foreground_jobs_are_never_stored() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    c, cp = h.connect()
    h.engine.submit(c, b"f", b"", b"x")
    assert persister.pending == [] and cp.types() == ["JOB_CREATED"]


def test_store_failure_answers_error_and_forgets_the_job() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    c, cp = h.connect()
    job = h.engine.submit(c, b"f", b"u", b"x", background=True)
    h.engine.persist_failed(persister.pending.pop(), b"disk full")
    assert cp.take() == [(T.ERROR, (b"QUEUE_ERROR", b"disk full"))]
    assert job.handle not in h.engine.jobs
    assert b"u" not in h.engine.functions[b"f"].unique
    assert persister.forgotten == []


def test_coalesced_submit_on_pending_job_waits_too() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    a, ap = h.connect()
    b, bp = h.connect()
    job = h.engine.submit(a, b"f", b"u", b"x", background=True)
    assert h.engine.submit(b, b"f", b"u", b"x", background=True) is job
    assert ap.take() == [] and bp.take() == []
    h.engine.persisted(persister.pending.pop())
    assert ap.take() == bp.take() == [(T.JOB_CREATED, (job.handle,))]


def test_completion_removes_from_store_but_requeue_does_not() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    c, _ = h.connect()
    job = h.engine.submit(c, b"f", b"", b"x", background=True)
    h.engine.persisted(persister.pending.pop())
    w, _ = h.worker(b"f")
    h.engine.grab(w)
    h.engine.disconnect(w)
    assert persister.forgotten == []
    w2, _ = h.worker(b"f")
    h.engine.grab(w2)
    h.engine.work_complete(w2, job.handle, b"")
    assert persister.forgotten == [job.id]


def test_restore_brings_back_handle_priority_unique_epoch() -> None:
    h = Harness(HeldPersister())
    future = int(h.clock.now) + 100
    h.engine.restore(StoredJob(7, b"f", b"u", Priority.LOW, None, b"low"))
    h.engine.restore(StoredJob(9, b"f", b"", Priority.HIGH, None, b"high"))
    h.engine.restore(StoredJob(12, b"f", b"e", Priority.NORMAL, future, b"epoch", b"red"))
    c, cp = h.connect()
    h.engine.get_status(c, b"H:t:7")
    assert cp.take()[0][1][1] == b"1"
    assert h.engine.submit(c, b"f", b"u", b"again", background=True).id == 7
    assert h.engine.next_id == 13
    w, wp = h.worker(b"f")
    h.engine.grab(w)
    h.engine.grab(w)
    h.engine.grab(w)
    assert [p[1][2] for p in wp.take()[:2]] == [b"high", b"low"]
