"""Model-based tests of the job engine: random interleavings checked against a model.

One hypothesis state machine drives one Engine (HeldPersister: background jobs stay
PENDING until the machine resolves them; ManualClock; the server's single timer
emulated from ``on_timer`` and ``run_timers``) through connects, disconnects, every kind
of submit, worker calls, status queries, admin calls and time. After every step it
compares each connection's packets with what the model in engine_model.py expects, checks
NOOP rules, the store calls (persist/forget) and the engine's internal bookkeeping.

Engine bugs the machine found are tolerated by name inside the machine (see
``KNOWN_BUGS``) so it keeps exploring; each has a minimal strict-xfail test at the end.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gearstore.engine.core import Engine, EngineOptions, SubmitError
from gearstore.engine.model import Function, GrabMode, JobState, Session
from gearstore.protocol.packets import PacketType as T
from gearstore.stores.base import Priority
from tests.unit.engine_helpers import FakePeer, Harness, HeldPersister, ManualClock
from tests.unit.engine_model import FINAL, KNOWN_BUGS, MConn, Model, Packet

FUNCTIONS = [b"f", b"g"]
UNIQUES = [b"", b"-", b"u1", b"u2"]
PAYLOADS = [b"x", b"y"]
# (background, priority, epoch, reducer): the forms the connection layer can produce
SUBMITS = [(bg, p, False, False) for bg in (False, True) for p in (0, 1, 2)] + [
    (True, 1, True, False),  # SUBMIT_JOB_EPOCH
    (False, 1, False, True),  # SUBMIT_REDUCE_JOB
    (True, 1, False, True),  # SUBMIT_REDUCE_JOB_BACKGROUND
]
WORK = ["status", "data", "warning", "complete", "fail", "exception"]
STATE = {
    "pending": JobState.PENDING,
    "scheduled": JobState.SCHEDULED,
    "queued": JobState.QUEUED,
    "running": JobState.RUNNING,
}


def names(packets: list[Packet]) -> list[str]:
    """Packets as readable text, for assertion messages."""
    return [f"{T(p).name}{tuple(args)}" for p, args in sorted(packets)]


class EngineMachine(RuleBasedStateMachine):
    """Drives one engine; subclasses pick the options."""

    JOB_RETRIES = 0
    WORKER_WAKEUP = 0
    ROUND_ROBIN = False
    EXCEPTIONS = False
    PERSIST = True
    TOLERATE: frozenset[str] = frozenset(KNOWN_BUGS)
    MAX_CONNS = 5

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.persister = HeldPersister() if self.PERSIST else None
        self.timer_at = math.inf  # the server's one timer, on the monotonic clock
        options = EngineOptions(
            handle_prefix=b"t",
            job_retries=self.JOB_RETRIES,
            worker_wakeup=self.WORKER_WAKEUP,
            round_robin=self.ROUND_ROBIN,
            exceptions=self.EXCEPTIONS,
        )
        self.engine = Engine(options, self.persister, self.clock, self._on_timer)
        self.model = Model(
            self.clock,
            job_retries=self.JOB_RETRIES,
            round_robin=self.ROUND_ROBIN,
            exceptions=self.EXCEPTIONS,
            persisting=self.PERSIST,
            tolerate=self.TOLERATE,
        )
        self.cid_of: dict[Session, int] = {}
        self.next_cid = 0
        self.finals: Counter[tuple[int, bytes]] = Counter()
        self.pending_seen = 0  # HeldPersister.pending entries already checked
        self.forgotten_seen: set[int] = set()

    def _on_timer(self, delay: float) -> None:
        assert delay >= 0
        self.timer_at = min(self.timer_at, self.clock.mono + delay)

    # ------------------------------------------------------------ step frame

    def _live(self) -> list[int]:
        return [cid for cid, c in self.model.conns.items() if c.live]

    def _pick(self, data: st.DataObject) -> MConn:
        return self.model.conns[data.draw(st.sampled_from(self._live()), label="conn")]

    def _begin(self) -> dict[int, set[bytes]]:
        """Start a step; return the sleeping workers and the functions that may wake them."""
        self.model.begin()
        return {cid: set(c.regs) for cid, c in self.model.conns.items() if c.live and c.regs}

    def _end(
        self,
        asleep: dict[int, set[bytes]],
        dying: int | None = None,
        sleeper: int | None = None,
        sleeper_noop: bool = False,
    ) -> None:
        """Compare every connection's packets with the model, then the NOOPs and store."""
        m = self.model
        noops: Counter[int] = Counter()
        for cid, conn in m.conns.items():
            got = conn.peer.take()
            noops[cid] = sum(1 for p, _ in got if p == T.NOOP)
            rest = [p for p in got if p[0] != T.NOOP]
            if cid == dying:
                continue  # the connection is gone; what it was sent on the way out is moot
            assert conn.live or not noops[cid], f"NOOP to closed connection {cid}"
            want = m.out.get(cid, [])
            assert sorted(rest) == sorted(want), (
                f"connection {cid}: engine sent {names(rest)}, model expects {names(want)}"
            )
            self._check_observed(cid, rest)
        self._check_noops(asleep, noops, dying, sleeper, sleeper_noop)
        self._check_store()

    def _check_observed(self, cid: int, packets: list[Packet]) -> None:
        """Rules on what was sent, independent of how the model predicted it."""
        m = self.model
        for ptype, args in packets:
            job = m.jobs.get(args[0]) if args else None
            if ptype == T.JOB_CREATED and job is not None and job.background and self.PERSIST:
                assert job.persisted, f"{args[0]!r} acknowledged before it was durable"
            if ptype in (T.JOB_ASSIGN, T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN_ALL):
                assert job is not None
                assert not (job.background and self.PERSIST) or job.persisted
                assert job.when is None or job.when <= self.clock.now, "epoch job too early"
            if ptype == T.WORK_EXCEPTION:
                asked = m.conns[cid].exceptions or self.EXCEPTIONS
                assert asked, "WORK_EXCEPTION to a client that did not ask"
            if ptype in FINAL:
                self.finals[(cid, args[0])] += 1
                assert self.finals[(cid, args[0])] == 1, f"second final packet for {args[0]!r}"
            if ptype == T.STATUS_RES and args[1] == b"1":
                assert job is not None and job.state in ("queued", "scheduled", "running")

    def _check_noops(
        self,
        asleep: dict[int, set[bytes]],
        noops: Counter[int],
        dying: int | None,
        sleeper: int | None,
        sleeper_noop: bool,
    ) -> None:
        m, limit = self.model, self.WORKER_WAKEUP
        if sleeper is not None:
            assert noops[sleeper] == int(sleeper_noop), "PRE_SLEEP: NOOP iff work is queued"
        wakes = {cid: n for cid, n in noops.items() if n and cid != sleeper}
        for cid, n in wakes.items():
            assert n == 1, f"{n} NOOPs to worker {cid} in one sleep"
            assert cid in asleep, f"NOOP to worker {cid}, which was not asleep"
            assert asleep[cid] & set(m.newly_queued), f"NOOP to {cid}: nothing it can do queued"
            m.conns[cid].sleeping = False
            m.conns[cid].regs.clear()
        queued = sum(m.newly_queued.values())
        if limit:
            assert sum(wakes.values()) <= limit * queued, "more NOOPs than -w allows"
        for fname in m.newly_queued:
            able = [
                cid
                for cid, can in asleep.items()
                if fname in can and (cid != dying or "W" in self.TOLERATE)
            ]
            woken = sum(1 for cid in able if cid in wakes)
            assert woken >= min(limit or len(able), len(able)), (
                f"new {fname!r} job: {woken} of sleeping {able} woken (-w {limit})"
            )

    def _check_store(self) -> None:
        if self.persister is None:
            return
        m = self.model
        new = [job.id for job in self.persister.pending[self.pending_seen :]]
        self.pending_seen = len(self.persister.pending)
        assert new == m.new_pending, f"persist() calls {new}, expected {m.new_pending}"
        forgotten = self.persister.forgotten[len(self.forgotten_seen) :]
        assert sorted(forgotten) == sorted(m.forget), f"forget() {forgotten}, want {m.forget}"
        for job_id in forgotten:
            assert job_id not in self.forgotten_seen, f"job {job_id} forgotten twice"
            job = m.jobs[b"H:t:%d" % job_id]  # a background job, made durable, now finished
            assert job.background and job.persisted and job.state == "done"
            self.forgotten_seen.add(job_id)

    # ---------------------------------------------------------- connections

    def _connect(self, exceptions: bool) -> None:
        peer = FakePeer()
        session = self.engine.connect(peer)
        session.exceptions = exceptions  # what OPTION_REQ "exceptions" does
        cid, self.next_cid = self.next_cid, self.next_cid + 1
        self.model.conns[cid] = MConn(cid, session, peer, exceptions=exceptions)
        self.cid_of[session] = cid

    @initialize(
        conns=st.lists(
            st.tuples(st.booleans(), st.sets(st.sampled_from(FUNCTIONS))), min_size=2, max_size=4
        )
    )
    def start(self, conns: list[tuple[bool, set[bytes]]]) -> None:
        """A few connections, some of them already workers (CAN_DO, no timeout)."""
        for exceptions, functions in conns:
            self._connect(exceptions)
            conn = self.model.conns[self.next_cid - 1]
            for fname in sorted(functions):
                self.model.can_do(conn.cid, fname, 0)
                self.engine.can_do(conn.session, fname)

    @precondition(lambda self: len(self._live()) < self.MAX_CONNS)
    @rule(exceptions=st.booleans())
    def connect(self, exceptions: bool) -> None:
        self._connect(exceptions)

    @precondition(lambda self: len(self._live()) > 1)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        conn = self._pick(data)
        asleep = self._begin()
        self.model.disconnect(conn.cid)
        self.engine.disconnect(conn.session)
        self._end(asleep, dying=conn.cid)

    # --------------------------------------------------------------- clients

    def _submit(self, data: st.DataObject, background: bool) -> None:
        conn = self._pick(data)
        forms = [f for f in SUBMITS if f[0] == background]
        _, priority, epoch, reduce = data.draw(st.sampled_from(forms), label="form")
        fname = data.draw(st.sampled_from(FUNCTIONS), label="function")
        unique = data.draw(st.sampled_from(UNIQUES), label="unique")
        payload = data.draw(st.sampled_from(PAYLOADS), label="data")
        when = int(self.clock.now) + data.draw(st.integers(-3, 20), label="when") if epoch else None
        reducer = b"r" if reduce else None
        asleep = self._begin()
        mjob = self.model.submit(
            conn.cid, fname, unique, payload, priority, background, when, reducer
        )
        try:
            job = self.engine.submit(
                conn.session, fname, unique, payload, Priority(priority), background, when, reducer
            )
        except SubmitError as exc:
            assert mjob is None, f"submit refused ({exc.code!r}) but the model accepts it"
            assert exc.code == b"QUEUE_ERROR"
        else:
            assert mjob is not None, "submit accepted beyond the queue limit"
            assert job.handle == mjob.handle, f"got {job.handle!r}, expected {mjob.handle!r}"
            if mjob.engine_job is None:
                mjob.engine_job = job
            assert job is mjob.engine_job
        self._end(asleep)

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def submit_foreground(self, data: st.DataObject) -> None:
        self._submit(data, False)

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def submit_background(self, data: st.DataObject) -> None:
        self._submit(data, True)

    def _pending(self) -> list[bytes]:
        return sorted(h for h, j in self.model.jobs.items() if j.state == "pending")

    @precondition(lambda self: self._pending())
    @rule(data=st.data(), ok=st.booleans(), batch=st.booleans(), again=st.booleans())
    def resolve_persist(self, data: st.DataObject, ok: bool, batch: bool, again: bool) -> None:
        """The writer's answer for one pending job or for all of them (one batch, in order).

        ``again``: a second, late answer for the same jobs, which must change nothing.
        """
        pending = self._pending()
        if not batch:
            pending = [data.draw(st.sampled_from(pending), label="pending")]
        for handle in pending:
            job = self.model.jobs[handle]
            assert job.engine_job is not None
            asleep = self._begin()
            if ok:
                self.model.persisted(job)
                self.engine.persisted(job.engine_job)
            else:
                self.model.persist_failed(job, b"disk full")
                self.engine.persist_failed(job.engine_job, b"disk full")
            self._end(asleep)
            if again:
                asleep = self._begin()
                self.engine.persisted(job.engine_job)
                self.engine.persist_failed(job.engine_job, b"late")
                self._end(asleep)

    def _handles(self) -> list[bytes]:
        return [*sorted(self.model.jobs), b"H:t:999", b"H:other:1"]

    @precondition(lambda self: self._live())
    @rule(data=st.data(), by_unique=st.booleans())
    def get_status(self, data: st.DataObject, by_unique: bool) -> None:
        """GET_STATUS on any handle, or GET_STATUS_UNIQUE on any key."""
        conn = self._pick(data)
        asleep = self._begin()
        if not by_unique:
            handle = data.draw(st.sampled_from(self._handles()), label="handle")
            self.model.get_status(conn.cid, handle)
            self.engine.get_status(conn.session, handle)
        else:
            unique = data.draw(st.sampled_from([*UNIQUES[1:], *PAYLOADS, b"no"]), label="key")
            answers = self.model.status_unique_answers(unique)
            self.engine.get_status_unique(conn.session, unique)
            sent = conn.peer.sent
            assert len(sent) == 1 and sent[0] in answers, f"got {sent}, acceptable {answers}"
            self.model.out[conn.cid].append(sent[0])
        self._end(asleep)

    # --------------------------------------------------------------- workers

    def _pick_worker(self, data: st.DataObject) -> MConn:
        """Mostly a connection that can do something: that is where the work happens."""
        able = [cid for cid in self._live() if self.model.conns[cid].abilities]
        return self.model.conns[data.draw(st.sampled_from(able or self._live()), label="conn")]

    @precondition(lambda self: self._live())
    @rule(
        data=st.data(),
        action=st.sampled_from(["can_do", "can_do", "can_do", "cant_do", "reset"]),
        fname=st.sampled_from(FUNCTIONS),
        timeout=st.sampled_from([0, 0, 2, 7]),
    )
    def abilities(self, data: st.DataObject, action: str, fname: bytes, timeout: int) -> None:
        """CAN_DO / CAN_DO_TIMEOUT / CANT_DO / RESET_ABILITIES."""
        conn = self._pick(data)
        asleep = self._begin()
        if action == "can_do":
            self.model.can_do(conn.cid, fname, timeout)
            self.engine.can_do(conn.session, fname, timeout)
        elif action == "cant_do":
            self.model.cant_do(conn.cid, fname)
            self.engine.cant_do(conn.session, fname)
        else:
            self.model.reset_abilities(conn.cid)
            self.engine.reset_abilities(conn.session)
        self._end(asleep)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), everyone=st.booleans())
    def pre_sleep(self, data: st.DataObject, everyone: bool) -> None:
        """PRE_SLEEP from one worker, or from every worker in turn (an idle pool)."""
        m = self.model
        if everyone:
            conns = [m.conns[cid] for cid in self._live() if m.conns[cid].abilities]
        else:
            conns = [self._pick_worker(data)]
        for conn in conns:
            asleep = self._begin()
            noop = m.pre_sleep(conn.cid)
            self.engine.pre_sleep(conn.session)
            self._end(asleep, sleeper=conn.cid, sleeper_noop=noop)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), mode=st.sampled_from(list(GrabMode)))
    def grab(self, data: st.DataObject, mode: GrabMode) -> None:
        """GRAB_JOB* by any worker (often answered NO_JOB)."""
        self._grab(self._pick_worker(data), mode)

    def _busy(self) -> list[int]:
        return [cid for cid in self._live() if self.model.grab_candidates(cid)]

    @precondition(lambda self: self._busy())
    @rule(data=st.data(), mode=st.sampled_from(list(GrabMode)))
    def grab_when_work_waits(self, data: st.DataObject, mode: GrabMode) -> None:
        """GRAB_JOB* by a worker that has something to get (so that jobs do run)."""
        self._grab(self.model.conns[data.draw(st.sampled_from(self._busy()), label="conn")], mode)

    def _grab(self, conn: MConn, mode: GrabMode) -> None:
        asleep = self._begin()
        candidates = self.model.grab_candidates(conn.cid)
        self.model.wake(conn.cid)
        job = self.engine.grab(conn.session, mode)
        if not candidates:
            assert job is None, f"assigned {job.handle!r} but nothing may be assigned"
            self.model.send(conn.cid, T.NO_JOB)
        else:
            assert job is not None, f"NO_JOB while {candidates} are waiting"
            assert job.handle in candidates, f"assigned {job.handle!r}, expected {candidates}"
            self.model.assign(conn.cid, job.handle, int(mode))
        self._end(asleep)

    def _held(self) -> list[tuple[int, bytes]]:
        conns = self.model.conns
        return sorted((cid, h) for cid in self._live() for h in conns[cid].holding)

    @precondition(lambda self: self._held())
    @rule(data=st.data(), kind=st.sampled_from(WORK), payload=st.sampled_from([b"1", b"3"]))
    def work_by_holder(self, data: st.DataObject, kind: str, payload: bytes) -> None:
        """WORK_* from the worker holding the job."""
        cid, handle = data.draw(st.sampled_from(self._held()), label="held")
        self._work(self.model.conns[cid], kind, handle, payload)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), kind=st.sampled_from(WORK))
    def work_by_other(self, data: st.DataObject, kind: str) -> None:
        """WORK_* from a worker that does not hold the job (never did, timed out, cancelled)."""
        conn = self._pick(data)
        handles = [h for h in self._handles() if self.model.holder(conn.cid, h) is None]
        self._work(conn, kind, data.draw(st.sampled_from(handles), label="handle"), b"late")

    def _work(self, conn: MConn, kind: str, handle: bytes, payload: bytes) -> None:
        asleep = self._begin()
        self.model.work(conn.cid, kind, handle, payload, b"4")
        session, engine = conn.session, self.engine
        if kind == "status":
            engine.work_status(session, handle, payload, b"4")
        elif kind in ("data", "warning"):
            ptype = T.WORK_DATA if kind == "data" else T.WORK_WARNING
            engine.work_update(session, ptype, handle, payload)
        elif kind == "complete":
            engine.work_complete(session, handle, payload)
        elif kind == "fail":
            engine.work_fail(session, handle)
        else:
            engine.work_exception(session, handle, payload)
        self._end(asleep)

    # ----------------------------------------------------------- admin, time

    @rule(
        data=st.data(),
        fname=st.sampled_from(FUNCTIONS),
        limits=st.lists(st.sampled_from([0, 0, 1, 3]), min_size=3, max_size=3),
    )
    def admin(self, data: st.DataObject, fname: bytes, limits: list[int]) -> None:
        """Admin ``cancel job`` on any handle, or ``maxqueue`` on a function."""
        if self.model.jobs and data.draw(st.booleans(), label="cancel"):
            handle = data.draw(st.sampled_from(self._handles()), label="handle")
            asleep = self._begin()
            expected = self.model.cancel(handle)
            assert self.engine.cancel(handle) == expected
            self._end(asleep)
        else:
            self.model.max_queue[fname] = limits
            self.engine.set_max_queue(fname, limits)

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 15.0]), fire=st.booleans())
    def time_passes(self, seconds: float, fire: bool) -> None:
        """Advance both clocks; maybe fire the server's timer (at any time, late or early)."""
        self.clock.advance(seconds)
        if not fire:
            return
        asleep = self._begin()
        self.model.fire_timers()
        self.timer_at = math.inf
        delay = self.engine.run_timers()
        due = self.model.next_due_mono()
        if due is not None:
            assert delay is not None and self.clock.mono + delay <= due, (delay, due)
        if delay is not None:
            self._on_timer(max(delay, 0.001))
        self._end(asleep)

    # ------------------------------------------------------------ invariants

    @invariant()
    def timer_is_armed(self) -> None:
        """Nothing due (epoch job, CAN_DO_TIMEOUT) is later than the server's timer."""
        due = self.model.next_due_mono()
        assert due is None or self.timer_at <= due, f"timer at {self.timer_at}, job due {due}"

    @invariant()
    def engine_matches_model(self) -> None:
        e, m = self.engine, self.model
        live = {h: j for h, j in m.jobs.items() if j.live}
        assert set(e.jobs) == set(live), f"engine jobs {sorted(e.jobs)}, model {sorted(live)}"
        for handle, job in e.jobs.items():
            mj = live[handle]
            assert job is mj.engine_job and job.handle == handle, f"{handle!r}: another Job"
            assert job.state == STATE[mj.state], f"{handle!r}: {job.state!r}, model {mj.state}"
            assert job.stored == mj.stored, f"{handle!r}: stored={job.stored}"
            listeners = [self.cid_of[s] for s in job.listeners]
            assert listeners == mj.listeners, f"{handle!r}: listeners {listeners}, {mj.listeners}"
            creators = Counter(self.cid_of[s] for s in job.creators)
            assert creators == Counter(mj.creators), f"{handle!r}: awaiting JOB_CREATED {creators}"
            if job.state == JobState.RUNNING:
                assert job.worker is not None and job in job.worker.jobs, f"{handle!r}: worker"
                assert self.cid_of[job.worker] == mj.worker, f"{handle!r} held by another worker"
            else:
                assert job.worker is None, f"{handle!r} is {job.state.name} but has a worker"
        for name, function in e.functions.items():
            self._check_function(name, function)
        for key, job in e.by_unique.items():
            assert job.handle in e.jobs and job.key == key, f"by_unique[{key!r}] is stale"
        self._check_sessions()

    def _check_function(self, name: bytes, function: Function) -> None:
        e, m = self.engine, self.model
        jobs = [j for j in e.jobs.values() if j.function is function]
        for p in range(3):
            queued = [j for j in jobs if j.state == JobState.QUEUED and j.priority == p]
            counts = (function.queued[p], len(queued), m.queued_count(name, p))
            assert len(set(counts)) == 1, f"{name!r} queued[{p}] counter/jobs/model: {counts}"
            entries = [
                j.handle
                for j in function.queues[p]
                if j.state == JobState.QUEUED and j.function is function
            ]
            assert len(entries) == len(set(entries)) == len(queued), f"{name!r}[{p}]: {entries}"
            at = 0
            for group in m.queues[(name, p)]:  # FIFO, requeued at the front
                here = entries[at : at + len(group)]
                assert set(here) == set(group), f"{name!r}[{p}] order: {entries}, want {group}"
                at += len(group)
        running = sum(1 for j in jobs if j.state == JobState.RUNNING)
        assert function.running == running - m.running_drift[name], f"{name!r}: running counter"
        scheduled = sum(1 for j in jobs if j.state == JobState.SCHEDULED)
        assert function.scheduled == scheduled, f"{name!r}: scheduled counter"
        keyed = {j.key: j for j in jobs if j.key is not None}
        assert len(keyed) == sum(1 for j in jobs if j.key is not None), "two live jobs, one key"
        assert function.unique == keyed, f"{name!r}: unique index"
        able = {c.session for c in m.conns.values() if c.live and name in c.abilities}
        assert set(function.workers) == able, f"{name!r}: capable workers"
        asleep = {c.session for c in m.conns.values() if name in c.regs}
        assert set(function.sleepers) == asleep, f"{name!r}: sleeping workers"

    def _check_sessions(self) -> None:
        e, m = self.engine, self.model
        live = {c.session for c in m.conns.values() if c.live}
        assert set(e.sessions) == live, "engine sessions vs open connections"
        for conn in m.conns.values():
            s = conn.session
            if not conn.live:
                assert not s.jobs and not s.abilities, f"closed connection {conn.cid} still busy"
                continue
            cid = conn.cid
            abilities = {f.name: t for f, t in s.abilities.items()}
            assert abilities == conn.abilities, f"{cid}: abilities {abilities}"
            assert [f.name for f in s.order] == conn.order, f"{cid}: function order"
            assert s.sleeping == conn.sleeping, f"{cid}: sleeping={s.sleeping}"
            held = {j.handle for j in s.jobs}
            assert held == conn.holding, f"{cid} holds {held}, model {conn.holding}"
            listened = {
                j.engine_job
                for j in m.live_jobs()
                if conn.cid in j.listeners or conn.cid in j.creators
            }
            assert s.listening == listened, f"{cid}: Session.listening"


# About 4 s per machine here; GEARSTORE_ENGINE_EXAMPLES=2000 makes a longer hunt.
SETTINGS = settings(
    max_examples=int(os.environ.get("GEARSTORE_ENGINE_EXAMPLES", "100")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class DefaultMachine(EngineMachine):
    """gearmand's defaults: retry forever, wake every sleeper, no round robin."""


class RetriesMachine(EngineMachine):
    """-j 2 -w 1."""

    JOB_RETRIES = 2
    WORKER_WAKEUP = 1


class RoundRobinMachine(EngineMachine):
    """-R -j 1 -w 2."""

    JOB_RETRIES = 1
    WORKER_WAKEUP = 2
    ROUND_ROBIN = True


class NoStoreMachine(EngineMachine):
    """No persister (in-memory queue, background jobs acknowledged at once), --exceptions."""

    PERSIST = False
    EXCEPTIONS = True


TestDefault = DefaultMachine.TestCase
TestDefault.settings = SETTINGS
TestRetries = RetriesMachine.TestCase
TestRetries.settings = SETTINGS
TestRoundRobin = RoundRobinMachine.TestCase
TestRoundRobin.settings = SETTINGS
TestNoStore = NoStoreMachine.TestCase
TestNoStore.settings = SETTINGS


# ------------------------------------------------------------------------------------------
# Engine bugs the machine found, each as its minimal sequence of calls. They are strict
# xfails: when the engine is fixed they pass, pytest reports XPASS as a failure, and the
# bug's name should then leave KNOWN_BUGS (so the machine checks that rule again).


@pytest.mark.xfail(strict=True, reason=f"engine bug A: {KNOWN_BUGS['A']}")
def test_bug_a_retries_exhausted_keeps_running_count() -> None:
    h = Harness(job_retries=1)
    client, _ = h.connect()
    h.engine.submit(client, b"f", b"", b"x")
    worker, _ = h.worker(b"f")
    h.engine.grab(worker)
    h.engine.disconnect(worker)  # first attempt lost: -j 1 fails the job
    assert h.engine.functions[b"f"].running == 0  # observed: -1


@pytest.mark.xfail(strict=True, reason=f"engine bug B1: {KNOWN_BUGS['B1']}")
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


@pytest.mark.xfail(strict=True, reason=f"engine bug B2: {KNOWN_BUGS['B2']}")
def test_bug_b2_acknowledged_background_submit_survives_foreground_disconnect() -> None:
    h = Harness(HeldPersister())
    fg, _ = h.connect()
    bg, bg_peer = h.connect()
    job = h.engine.submit(fg, b"f", b"u", b"x")
    h.engine.submit(bg, b"f", b"u", b"x", background=True)
    assert bg_peer.take() == [(T.JOB_CREATED, (job.handle,))]
    h.engine.disconnect(fg)
    assert job.handle in h.engine.jobs  # observed: dropped as an abandoned foreground job


@pytest.mark.xfail(strict=True, reason=f"engine bug C: {KNOWN_BUGS['C']}")
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


@pytest.mark.xfail(strict=True, reason=f"engine bug D: {KNOWN_BUGS['D']}")
def test_bug_d_disconnected_double_submitter_is_not_answered() -> None:
    persister = HeldPersister()
    h = Harness(persister)
    client, peer = h.connect()
    job = h.engine.submit(client, b"f", b"u", b"x", background=True)
    h.engine.submit(client, b"f", b"u", b"x", background=True)  # same key: joins, pending
    h.engine.disconnect(client)  # removes one of its two entries in job.creators
    h.engine.persisted(job)
    assert peer.take() == []  # observed: JOB_CREATED to the closed connection


@pytest.mark.xfail(strict=True, reason=f"engine bug R: {KNOWN_BUGS['R']}")
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


@pytest.mark.xfail(strict=True, reason=f"engine bug S: {KNOWN_BUGS['S']}")
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


@pytest.mark.xfail(strict=True, reason=f"engine bug W: {KNOWN_BUGS['W']}")
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


@pytest.mark.xfail(strict=True, reason=f"engine bug E: {KNOWN_BUGS['E']}")
def test_bug_e_exceptions_option_is_every_clients_default() -> None:
    h = Harness(exceptions=True)
    client, peer = h.connect()
    job = h.engine.submit(client, b"f", b"", b"x")
    worker, _ = h.worker(b"f")
    h.engine.grab(worker)
    h.engine.work_exception(worker, job.handle, b"boom")
    assert peer.take()[-1] == (T.WORK_EXCEPTION, (job.handle, b"boom"))  # got WORK_FAIL
