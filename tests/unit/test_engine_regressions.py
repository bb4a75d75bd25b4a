"""Regression tests for engine bugs found by model-based testing."""

from __future__ import annotations

from gearstore.protocol.packets import PacketType as T
from tests.unit.engine_helpers import Harness, HeldPersister

# ------------------------------------------------------------------------------------------
# Engine bugs a model-based (hypothesis stateful) test found, each as its minimal
# sequence of calls; all are fixed and these keep them fixed.


def test_bug_a_retries_exhausted_keeps_running_count() -> None:
    h = Harness(job_retries=1)
    client, _ = h.connect()
    h.engine.submit(client, b"f", b"", b"x")
    worker, _ = h.worker(b"f")
    h.engine.grab(worker)
    h.engine.disconnect(worker)  # first attempt lost: -j 1 fails the job
    assert h.engine.functions[b"f"].running == 0  # observed: -1


def test_bug_b1_background_submit_joining_foreground_job_is_stored() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    fg, _ = h.connect()
    bg, bg_peer = h.connect()
    h.engine.submit(fg, b"f", b"u", b"x")
    h.engine.submit(bg, b"f", b"u", b"x", background=True)
    # DESIGN.md: a background submit is answered with JOB_CREATED only once durable.
    # Observed: JOB_CREATED at once, and nothing was ever given to the store.
    assert persister.pending or not bg_peer.sent


def test_bug_b2_acknowledged_background_submit_survives_foreground_disconnect() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    fg, _ = h.connect()
    bg, bg_peer = h.connect()
    job = h.engine.submit(fg, b"f", b"u", b"x")
    h.engine.submit(bg, b"f", b"u", b"x", background=True)
    assert bg_peer.take() == []  # not before the job is durable
    h.engine.persisted(persister.pending.pop())
    assert bg_peer.take() == [(T.JOB_CREATED, (job.handle,))]
    h.engine.disconnect(fg)
    assert job.handle in h.engine.jobs  # observed: dropped as an abandoned foreground job


def test_bug_c_status_unique_finds_job_after_same_key_finished_elsewhere() -> None:
    h = Harness()
    client, peer = h.connect()
    h.engine.submit(client, b"f", b"u", b"x", background=True)
    other = h.engine.submit(client, b"g", b"u", b"y", background=True)
    worker, _ = h.worker(b"g")
    h.engine.grab(worker)
    h.engine.work_complete(worker, other.handle, b"")
    peer.take()
    h.engine.get_status_unique(client, b"u")
    # the f job with unique "u" is still queued; observed: known=0 (Engine.by_unique held
    # only the most recent job per key, and lost it when that job finished)
    assert peer.take() == [(T.STATUS_RES_UNIQUE, (b"u", b"1", b"0", b"0", b"0", b"0"))]


def test_bug_d_disconnected_double_submitter_is_not_answered() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    client, peer = h.connect()
    job = h.engine.submit(client, b"f", b"u", b"x", background=True)
    h.engine.submit(client, b"f", b"u", b"x", background=True)  # same key: joins, pending
    h.engine.disconnect(client)  # removes one of its two entries in job.creators
    h.engine.persisted(job)
    assert peer.take() == []  # observed: JOB_CREATED to the closed connection


def test_bug_r_requeue_resets_progress() -> None:
    h = Harness()
    client, peer = h.connect()
    job = h.engine.submit(client, b"f", b"", b"x", background=True)
    worker, _ = h.worker(b"f")
    h.engine.grab(worker)
    h.engine.work_status(worker, job.handle, b"9", b"10")
    h.engine.disconnect(worker)  # the job starts again from the front of the queue
    peer.take()
    h.engine.get_status(client, job.handle)
    assert peer.take() == [(T.STATUS_RES, (job.handle, b"1", b"0", b"0", b"0"))]  # got 9/10


def test_bug_s_immediate_noop_leaves_no_stale_sleeper() -> None:
    h = Harness(worker_wakeup=1)
    client, _ = h.connect()
    a, a_peer = h.connect()
    h.engine.pre_sleep(a)
    h.engine.submit(client, b"f", b"", b"1", background=True)
    h.engine.can_do(a, b"f")  # registered while asleep: a joins f's sleepers
    h.engine.pre_sleep(a)  # work is waiting: NOOP at once, but a stays in f's sleepers
    h.engine.grab(a)  # a runs job 1 and is not asleep
    b, b_peer = h.worker(b"f")
    h.engine.pre_sleep(b)  # nothing queued: b sleeps
    a_peer.take()
    h.engine.submit(client, b"f", b"", b"2", background=True)
    assert b_peer.types() == ["NOOP"]  # observed: [] (the one NOOP went to busy worker a)


def test_bug_w_requeue_on_disconnect_wakes_a_live_sleeper() -> None:
    h = Harness(worker_wakeup=1)
    client, _ = h.connect()
    first, _ = h.worker(b"f")
    second, second_peer = h.worker(b"f")
    h.engine.submit(client, b"f", b"", b"x", background=True)
    h.engine.grab(first)
    h.engine.pre_sleep(first)  # a worker that sleeps while running a job (async workers do)
    h.engine.pre_sleep(second)
    h.engine.disconnect(first)  # job requeued; the one NOOP goes to the closing connection
    assert second_peer.types() == ["NOOP"]  # observed: []


def test_bug_e_exceptions_option_is_every_clients_default() -> None:
    h = Harness(exceptions=True)
    client, peer = h.connect()
    job = h.engine.submit(client, b"f", b"", b"x")
    worker, _ = h.worker(b"f")
    h.engine.grab(worker)
    h.engine.work_exception(worker, job.handle, b"boom")
    assert peer.take()[-1] == (T.WORK_EXCEPTION, (job.handle, b"boom"))  # got WORK_FAIL
