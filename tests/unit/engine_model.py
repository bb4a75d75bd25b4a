"""A reference model of the job engine, for the stateful tests in test_engine_stateful.py.

The model is written from the documented rules (DESIGN.md, docs/architecture.md, the example
tests, gearmand where they are silent): it keeps jobs, queues and workers as plain lists and,
for every call, says which packets each connection must receive. Where the model cannot
know the engine's choice (which of several jobs requeued together comes first, which
sleeping workers a NOOP goes to), it says what is allowed and the machine checks that.

Known engine bugs are named (see ``KNOWN_BUGS``); a model built with a name in
``tolerate`` follows the engine's behaviour there, so the machine keeps exploring
everything else while the bug has its own strict xfail test.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from gearstore.engine.model import Job, Session
from gearstore.protocol.packets import PacketType as T
from tests.unit.engine_helpers import FakePeer, ManualClock

Packet = tuple[int, tuple[bytes, ...]]

#: Engine bugs found by the machine, each with a strict xfail test in test_engine_stateful.py.
#: Once the engine is fixed, that test XPASSes (a failure) and the machine, still following
#: the old behaviour, fails too: delete the name here and the model checks the rule again.
KNOWN_BUGS = {
    "A": "retries exhausted on a lost job decrements Function.running twice",
    "B1": "a background submit coalesced onto a foreground job is acknowledged, never stored",
    "B2": "such an acknowledged job is dropped when its foreground clients disconnect",
    "C": "GET_STATUS_UNIQUE misses live jobs when the same key is used by another function",
    "D": "a client that joined a pending job twice and disconnected is still answered",
    "R": "progress (WORK_STATUS numbers) survives a requeue; gearmand resets it to 0/0",
    "S": "a PRE_SLEEP answered at once with NOOP leaves the worker in Function.sleepers",
    "W": "under -w N a job requeued by a disconnecting worker spends a NOOP on that worker",
    "E": "the server-wide --exceptions default (EngineOptions.exceptions) is never applied",
}

FINAL = (T.WORK_COMPLETE, T.WORK_FAIL, T.WORK_EXCEPTION)


@dataclass(eq=False)
class MConn:
    """One connection as the model sees it (a connection may be client and worker)."""

    cid: int
    session: Session
    peer: FakePeer
    live: bool = True
    exceptions: bool = False
    abilities: dict[bytes, int] = field(default_factory=dict)
    order: list[bytes] = field(default_factory=list)
    sleeping: bool = False
    #: functions whose sleeper lists hold this worker (the ones whose new jobs NOOP it)
    regs: set[bytes] = field(default_factory=set)
    holding: set[bytes] = field(default_factory=set)


@dataclass(eq=False)
class MJob:
    """One job as the model sees it."""

    handle: bytes
    id: int
    fname: bytes
    unique: bytes
    data: bytes
    priority: int
    background: bool
    when: int | None
    reducer: bytes | None
    engine_job: Job | None = None
    state: str = "pending"
    worker: int | None = None
    listeners: list[int] = field(default_factory=list)
    #: one entry per submit still waiting for its answer (JOB_CREATED or ERROR)
    creators: list[int] = field(default_factory=list)
    stored: bool = False
    persisted: bool = False
    #: a background submitter was told JOB_CREATED for this job
    acked_bg: bool = False
    failures: int = 0
    num: bytes = b"0"
    den: bytes = b"0"
    deadline: float | None = None

    @property
    def key(self) -> bytes | None:
        """The coalescing key, None when the job never coalesces."""
        return (self.data if self.unique == b"-" else self.unique) or None

    @property
    def live(self) -> bool:
        """Still known to the server."""
        return self.state != "done"


class Model:
    """Reference state plus the expected effects of the current step."""

    def __init__(
        self,
        clock: ManualClock,
        *,
        job_retries: int = 0,
        round_robin: bool = False,
        exceptions: bool = False,
        persisting: bool = True,
        tolerate: frozenset[str] = frozenset(),
    ) -> None:
        self.clock = clock
        self.job_retries = job_retries
        self.round_robin = round_robin
        #: the server-wide --exceptions default (bug "E": the engine ignores it)
        self.exceptions = exceptions and "E" not in tolerate
        self.persisting = persisting
        self.tolerate = tolerate
        self.conns: dict[int, MConn] = {}
        self.jobs: dict[bytes, MJob] = {}
        #: (function, priority) -> groups of handles; order inside a group is free
        #: (several jobs requeued at once may come back in any order)
        self.queues: defaultdict[tuple[bytes, int], list[list[bytes]]] = defaultdict(list)
        self.max_queue: dict[bytes, list[int]] = {}
        self.by_unique: dict[bytes, bytes] = {}  # only used when "C" is tolerated
        self.next_id = 1
        self.running_drift: Counter[bytes] = Counter()  # only grows when "A" is tolerated
        self.begin()

    # -------------------------------------------------------------- step frame

    def begin(self) -> None:
        """Start a step: forget the previous step's expectations."""
        self.out: defaultdict[int, list[Packet]] = defaultdict(list)
        self.forget: list[int] = []
        self.new_pending: list[int] = []
        self.newly_queued: Counter[bytes] = Counter()

    def deviation(self, name: str, message: str) -> None:
        """The engine is about to break a rule: fail unless that bug is tolerated."""
        if name not in self.tolerate:
            raise AssertionError(f"[{name}] {message}")

    def send(self, cid: int, ptype: int, *args: bytes) -> None:
        self.out[cid].append((ptype, args))

    # ----------------------------------------------------------------- queries

    def live_jobs(self) -> list[MJob]:
        return [j for j in self.jobs.values() if j.live]

    def queued_count(self, fname: bytes, priority: int) -> int:
        return sum(len(g) for g in self.queues[(fname, priority)])

    def find_live(self, fname: bytes, key: bytes) -> MJob | None:
        for job in self.jobs.values():
            if job.live and job.fname == fname and job.key == key:
                return job
        return None

    def next_due_mono(self) -> float | None:
        """When the server's timer must fire next (monotonic), None if nothing waits."""
        offset = self.clock.now - self.clock.mono
        dues = [j.when - offset for j in self.live_jobs() if j.state == "scheduled"]
        dues += [j.deadline for j in self.live_jobs() if j.deadline is not None]
        return min(dues) if dues else None

    # ----------------------------------------------------------------- clients

    def submit(
        self,
        cid: int,
        fname: bytes,
        unique: bytes,
        data: bytes,
        priority: int,
        background: bool,
        when: int | None,
        reducer: bytes | None,
    ) -> MJob | None:
        """Any SUBMIT_JOB form; None when the queue limit refuses it."""
        key = (data if unique == b"-" else unique) or None
        existing = self.find_live(fname, key) if key is not None else None
        if existing is not None:
            self._join(existing, cid, background)
            return existing
        limits = self.max_queue.get(fname, [0, 0, 0])
        if limits[priority] and self.queued_count(fname, priority) >= limits[priority]:
            return None
        job = MJob(
            b"H:t:%d" % self.next_id, self.next_id, fname, unique, data, priority,
            background, when, reducer,
        )  # fmt: skip
        self.next_id += 1
        self.jobs[job.handle] = job
        if key is not None:
            self.by_unique[key] = job.handle
        if not background:
            job.listeners.append(cid)
        if background and self.persisting:
            job.stored = True
            job.creators.append(cid)
            self.new_pending.append(job.id)
            return job
        self.send(cid, T.JOB_CREATED, job.handle)
        job.acked_bg = background
        self._activate(job)
        return job

    def _join(self, job: MJob, cid: int, background: bool) -> None:
        if not background and cid not in job.listeners:
            job.listeners.append(cid)
        if job.state == "pending":
            job.creators.append(cid)
            return
        self.send(cid, T.JOB_CREATED, job.handle)
        if background:
            if self.persisting and not job.stored:
                self.deviation("B1", f"background submit acknowledged for unstored {job.handle!r}")
            job.acked_bg = True

    def persisted(self, job: MJob) -> None:
        if job.state != "pending":
            return
        job.persisted = True
        job.acked_bg = True
        for cid in job.creators:
            self.send(cid, T.JOB_CREATED, job.handle)
        job.creators.clear()
        self._activate(job)

    def persist_failed(self, job: MJob, message: bytes) -> None:
        if job.state != "pending":
            return
        for cid in job.creators:
            self.send(cid, T.ERROR, b"QUEUE_ERROR", message)
        job.stored = False
        self._finish(job)

    def get_status(self, cid: int, handle: bytes) -> None:
        job = self.jobs.get(handle)
        if job is None or job.state in ("pending", "done"):
            self.send(cid, T.STATUS_RES, handle, b"0", b"0", b"0", b"0")
            return
        running = b"1" if job.state == "running" else b"0"
        self.send(cid, T.STATUS_RES, handle, b"1", running, job.num, job.den)

    def status_unique_answers(self, unique: bytes) -> list[Packet]:
        """Every acceptable STATUS_RES_UNIQUE: one per live visible job with that key."""
        if "C" in self.tolerate:
            handle = self.by_unique.get(unique)
            jobs = [self.jobs[handle]] if handle is not None else []
        else:
            jobs = [j for j in self.live_jobs() if j.key == unique]
        answers = [
            (T.STATUS_RES_UNIQUE, (unique, b"1", b"1" if j.state == "running" else b"0",
                                   j.num, j.den, str(len(j.listeners)).encode()))
            for j in jobs
            if j.state != "pending"
        ]  # fmt: skip
        return answers or [(T.STATUS_RES_UNIQUE, (unique, b"0", b"0", b"0", b"0", b"0"))]

    def disconnect(self, cid: int) -> None:
        conn = self.conns[cid]
        conn.live = False
        self._requeue([self.jobs[h] for h in sorted(conn.holding)])
        conn.abilities.clear()
        conn.order.clear()
        conn.sleeping = False
        conn.regs.clear()
        for job in self.live_jobs():
            if cid not in job.listeners and cid not in job.creators:
                continue
            if cid in job.listeners:
                job.listeners.remove(cid)
            if "D" in self.tolerate:
                if cid in job.creators:
                    job.creators.remove(cid)
            else:
                job.creators = [c for c in job.creators if c != cid]
            abandoned = not job.background and not job.listeners and job.state == "queued"
            # a job some background submitter was told about is not abandoned (bug B2)
            if abandoned and (not job.acked_bg or "B2" in self.tolerate):
                self._finish(job)

    # ----------------------------------------------------------------- workers

    def can_do(self, cid: int, fname: bytes, timeout: int) -> None:
        conn = self.conns[cid]
        if fname not in conn.abilities:
            conn.order.append(fname)
            if conn.sleeping:
                conn.regs.add(fname)
        conn.abilities[fname] = timeout

    def cant_do(self, cid: int, fname: bytes) -> None:
        conn = self.conns[cid]
        if fname in conn.abilities:
            del conn.abilities[fname]
            conn.order.remove(fname)
            conn.regs.discard(fname)

    def reset_abilities(self, cid: int) -> None:
        conn = self.conns[cid]
        conn.abilities.clear()
        conn.order.clear()
        conn.regs.clear()

    def pre_sleep(self, cid: int) -> bool:
        """PRE_SLEEP; True when a NOOP is due at once (work is already queued)."""
        conn = self.conns[cid]
        waiting = any(self.queued_count(f, p) for f in conn.abilities for p in range(3))
        conn.sleeping = not waiting
        if not waiting:
            conn.regs |= set(conn.abilities)
        elif "S" not in self.tolerate:
            conn.regs.clear()
        return waiting

    def wake(self, cid: int) -> None:
        """A GRAB: the worker is awake from now on."""
        conn = self.conns[cid]
        if conn.sleeping:
            conn.regs.clear()
        conn.sleeping = False

    def grab_candidates(self, cid: int) -> list[bytes]:
        """Jobs a GRAB may return: the front group of the best queue (empty: NO_JOB)."""
        conn = self.conns[cid]
        for priority in range(3):
            for fname in conn.order:
                groups = self.queues[(fname, priority)]
                if groups:
                    return list(groups[0])
        return []

    def assign(self, cid: int, handle: bytes, mode: int) -> None:
        conn, job = self.conns[cid], self.jobs[handle]
        self._unqueue(job)
        job.state, job.worker = "running", cid
        conn.holding.add(handle)
        timeout = conn.abilities[job.fname]
        job.deadline = self.clock.mono + timeout if timeout else None
        if self.round_robin and len(conn.order) > 1:
            conn.order.remove(job.fname)
            conn.order.append(job.fname)
        if mode == 0:
            self.send(cid, T.JOB_ASSIGN, handle, job.fname, job.data)
        elif mode == 1:
            self.send(cid, T.JOB_ASSIGN_UNIQ, handle, job.fname, job.unique, job.data)
        else:
            args = (handle, job.fname, job.unique, job.reducer or b"", job.data)
            self.send(cid, T.JOB_ASSIGN_ALL, *args)

    def holder(self, cid: int, handle: bytes) -> MJob | None:
        job = self.jobs.get(handle)
        return job if job is not None and job.live and job.worker == cid else None

    def work(self, cid: int, kind: str, handle: bytes, a: bytes, b: bytes) -> None:
        """A WORK_* packet from ``cid``; dropped unless it holds the job."""
        job = self.holder(cid, handle)
        if job is None:
            return
        if kind == "status":
            job.num, job.den = a, b
            self._tell(job, T.WORK_STATUS, handle, a, b)
        elif kind in ("data", "warning"):
            self._tell(job, T.WORK_DATA if kind == "data" else T.WORK_WARNING, handle, a)
        elif kind == "complete":
            self._tell(job, T.WORK_COMPLETE, handle, a)
            self._finish(job)
        elif kind == "fail":
            self._tell(job, T.WORK_FAIL, handle)
            self._finish(job)
        else:
            for listener in job.listeners:
                if self.conns[listener].exceptions or self.exceptions:
                    self.send(listener, T.WORK_EXCEPTION, handle, a)
                else:
                    self.send(listener, T.WORK_FAIL, handle)
            self._finish(job)

    # ------------------------------------------------------------ admin, time

    def cancel(self, handle: bytes) -> bool:
        job = self.jobs.get(handle)
        if job is None or job.state in ("pending", "done"):
            return False
        self._tell(job, T.WORK_FAIL, handle)
        self._finish(job)
        return True

    def fire_timers(self) -> None:
        now, mono = self.clock.now, self.clock.mono
        due = [j for j in self.live_jobs() if j.state == "scheduled" and j.when is not None]
        for job in sorted((j for j in due if j.when <= now), key=lambda j: (j.when, j.id)):
            job.state = "queued"
            self.queues[(job.fname, job.priority)].append([job.handle])
            self.newly_queued[job.fname] += 1
        late = [j for j in self.live_jobs() if j.deadline is not None and j.deadline <= mono]
        self._requeue(late)

    # ---------------------------------------------------------------- helpers

    def _tell(self, job: MJob, ptype: int, *args: bytes) -> None:
        for listener in job.listeners:
            self.send(listener, ptype, *args)

    def _activate(self, job: MJob) -> None:
        if job.when is not None and job.when > self.clock.now:
            job.state = "scheduled"
            return
        job.state = "queued"
        self.queues[(job.fname, job.priority)].append([job.handle])
        self.newly_queued[job.fname] += 1

    def _requeue(self, jobs: list[MJob]) -> None:
        """Jobs taken from their worker: fail the exhausted ones, the rest to the front."""
        fronts: defaultdict[tuple[bytes, int], list[bytes]] = defaultdict(list)
        for job in jobs:
            assert job.worker is not None
            self.conns[job.worker].holding.discard(job.handle)
            job.worker, job.deadline = None, None
            job.failures += 1
            if self.job_retries and job.failures >= self.job_retries:
                if "A" in self.tolerate:
                    self.running_drift[job.fname] += 1
                self._tell(job, T.WORK_FAIL, job.handle)
                self._finish(job)  # still "running", so not looked for in a queue
                continue
            job.state = "queued"
            if "R" not in self.tolerate:
                job.num, job.den = b"0", b"0"
            fronts[(job.fname, job.priority)].append(job.handle)
            self.newly_queued[job.fname] += 1
        for where, handles in fronts.items():
            self.queues[where].insert(0, handles)

    def _unqueue(self, job: MJob) -> None:
        groups = self.queues[(job.fname, job.priority)]
        for group in groups:
            if job.handle in group:
                group.remove(job.handle)
                if not group:
                    groups.remove(group)
                return

    def _finish(self, job: MJob) -> None:
        """Final outcome (the caller sent the final packets)."""
        if job.state == "queued":
            self._unqueue(job)
        if job.worker is not None:
            self.conns[job.worker].holding.discard(job.handle)
        job.state, job.worker, job.deadline = "done", None, None
        job.listeners.clear()
        job.creators.clear()
        key = job.key
        if key is not None and self.by_unique.get(key) == job.handle:
            del self.by_unique[key]
        if job.stored:
            job.stored = False
            self.forget.append(job.id)
