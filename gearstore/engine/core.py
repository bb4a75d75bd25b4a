"""The job engine: every rule of job semantics, with no I/O.

The engine is driven by method calls from connections (one per received packet) and
answers through :class:`~gearstore.engine.model.Peer` objects. Persistence is delegated
to a :class:`Persister`: the engine asks it to persist a new background job and is told
later, through :meth:`Engine.persisted` or :meth:`Engine.persist_failed`, how that went.
Time comes from an injected clock so timers are testable without sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from gearstore.engine.model import Function, GrabMode, Job, JobState, Peer, Session
from gearstore.protocol.packets import PacketType as T
from gearstore.stores.base import Priority, StoredJob


class Persister(Protocol):
    """The engine's view of the store writer."""

    def persist(self, job: Job) -> None:
        """Start making ``job`` durable; report back via persisted/persist_failed."""

    def forget(self, job_id: int) -> None:
        """Remove a finished job from the store (eventually; retried on failure)."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Behaviour switches taken from the command line."""

    handle_prefix: bytes = b"gearstore"
    job_retries: int = 0  # 0: retry forever
    worker_wakeup: int = 0  # 0: wake every sleeping worker
    round_robin: bool = False
    exceptions: bool = False  # default of the "exceptions" client option


class Clock(Protocol):
    """Wall-clock time (epoch jobs) and monotonic time (CAN_DO_TIMEOUT)."""

    def time(self) -> float:
        """Seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""


class SystemClock:
    """The real clocks."""

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)


_ASSIGN = (T.JOB_ASSIGN, T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN_ALL)


class SubmitError(Exception):
    """A submit was refused; ``code`` and ``args[0]`` go into the ERROR packet."""

    def __init__(self, code: bytes, message: bytes) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Engine:
    """In-memory job server state and rules. Single-threaded; no locks, no I/O."""

    def __init__(
        self,
        options: EngineOptions | None = None,
        persister: Persister | None = None,
        clock: Clock | None = None,
        on_timer: Callable[[float], None] | None = None,
    ) -> None:
        self.options = options or EngineOptions()
        self.persister = persister
        self.clock: Clock = clock or SystemClock()
        #: called with a delay in seconds whenever an earlier timer is set
        self.on_timer = on_timer
        self.functions: dict[bytes, Function] = {}
        self.jobs: dict[bytes, Job] = {}  # handle -> job
        self.sessions: dict[Session, None] = {}
        self._next_id = 1
        #: set during a graceful shutdown: workers get NO_JOB, running jobs finish
        self.draining = False
        self._handle_head = b"H:" + self.options.handle_prefix + b":"
        self._epoch_heap: list[tuple[int, int, Job]] = []
        self._timeout_heap: list[tuple[float, int, Job, int]] = []
        self._seq = itertools.count()

    # ----------------------------------------------------------------- sessions

    def connect(self, peer: Peer, peer_name: str = "-") -> Session:
        """Register a new connection."""
        session = Session(peer, peer_name)
        session.exceptions = self.options.exceptions
        self.sessions[session] = None
        return session

    def disconnect(self, session: Session) -> None:
        """Forget a connection: requeue its running jobs, drop its abandoned ones."""
        self.sessions.pop(session, None)
        # a closing worker must not be the one woken for the jobs it gives back
        self._unsleep(session)
        for function in list(session.abilities):
            self._drop_ability(session, function)
        for job in list(session.jobs):
            self._lose_job(job)
        for job in list(session.listening):
            if session in job.listeners:
                job.listeners.remove(session)
            job.creators[:] = [c for c in job.creators if c is not session]
            if not job.background and not job.listeners and job.state == JobState.QUEUED:
                self._finish(job)
        session.listening.clear()

    # ------------------------------------------------------------------ clients

    def function(self, name: bytes) -> Function:
        """The function called ``name``, created on first use."""
        function = self.functions.get(name)
        if function is None:
            function = self.functions[name] = Function(name)
        return function

    def submit(
        self,
        session: Session | None,
        name: bytes,
        unique: bytes,
        data: bytes,
        priority: Priority = Priority.NORMAL,
        background: bool = False,
        when: int | None = None,
        reducer: bytes | None = None,
    ) -> Job:
        """Handle any SUBMIT_JOB form. Answers JOB_CREATED (now, or once durable).

        Raises :class:`SubmitError` when the job is refused (full queue).
        """
        function = self.functions.get(name) or self.function(name)
        key = (data if unique == b"-" else unique) or None
        if key is not None:
            existing = function.unique.get(key)
            if existing is not None:
                self._join(existing, session, background)
                return existing
        if (
            function.max_queue[priority]
            and function.queued[priority] >= function.max_queue[priority]
        ):
            raise SubmitError(b"QUEUE_ERROR", b"Job queue is full")
        job_id = self._next_id
        self._next_id = job_id + 1
        job = Job(
            job_id,
            self._handle_head + str(job_id).encode(),
            function,
            unique,
            data,
            priority,
            background,
            when,
            reducer,
        )
        self.jobs[job.handle] = job
        if key is not None:
            function.unique[key] = job
        if session is not None and not background:
            job.listeners.append(session)
            session.listening.add(job)
        if background and self.persister is not None:
            job.stored = True
            if session is not None:
                job.creators.append(session)
                session.listening.add(job)
            self.persister.persist(job)
            return job
        if session is not None:
            session.peer.send(T.JOB_CREATED, job.handle)
        self._activate(job)
        return job

    def _join(self, job: Job, session: Session | None, background: bool) -> None:
        """A submit coalesced with a live job."""
        if background and not job.background:
            # a background submitter must not lose the job when the foreground one
            # leaves, and is answered only once the job is durable
            job.background = True
            if self.persister is not None and job.state != JobState.PENDING:
                job.stored = True
                if session is not None:
                    job.creators.append(session)
                    session.listening.add(job)
                self.persister.persist(job)
                return
        if session is None:
            return
        if not background and session not in job.listeners:
            job.listeners.append(session)
            session.listening.add(job)
        if job.state == JobState.PENDING or job.creators:
            if session not in job.creators:
                job.creators.append(session)
            session.listening.add(job)
        else:
            session.peer.send(T.JOB_CREATED, job.handle)

    def persisted(self, job: Job) -> None:
        """The store writer made ``job`` durable: acknowledge it and queue it."""
        if job.state == JobState.DONE:
            return
        for session in job.creators:
            session.peer.send(T.JOB_CREATED, job.handle)
            if session not in job.listeners:
                session.listening.discard(job)
        job.creators.clear()
        if job.state == JobState.PENDING:
            self._activate(job)

    def persist_failed(self, job: Job, message: bytes) -> None:
        """The store could not write ``job``: tell its submitters, forget the job."""
        if job.state == JobState.DONE:
            return
        if job.state != JobState.PENDING:
            # a foreground job a background submitter joined: it stays foreground
            for session in job.creators:
                session.peer.send(T.ERROR, b"QUEUE_ERROR", message)
                if session not in job.listeners:
                    session.listening.discard(job)
            job.creators.clear()
            job.background = False
            job.stored = False
            if not job.listeners and job.state == JobState.QUEUED:
                self._finish(job)
            return
        for session in job.creators:
            session.peer.send(T.ERROR, b"QUEUE_ERROR", message)
        for session in job.listeners:
            if session not in job.creators:
                session.peer.send(T.ERROR, b"QUEUE_ERROR", message)
        job.stored = False  # nothing to remove from the store
        self._finish(job)

    def restore(self, stored: StoredJob) -> Job:
        """Bring back a job from the store at startup (already durable)."""
        function = self.function(stored.function)
        job = Job(
            stored.id,
            self._handle_head + str(stored.id).encode(),
            function,
            stored.unique,
            stored.data,
            Priority(stored.priority),
            True,
            stored.when,
            stored.reducer,
        )
        job.stored = True
        self.jobs[job.handle] = job
        if job.key is not None:
            function.unique[job.key] = job
        if stored.id >= self._next_id:
            self._next_id = stored.id + 1
        self._activate(job)
        return job

    def _activate(self, job: Job) -> None:
        """Put a new job in its queue, or in the epoch heap if its time has not come."""
        if job.when is not None and job.when > self.clock.time():
            job.state = JobState.SCHEDULED
            job.function.scheduled += 1
            heap = self._epoch_heap
            first = heap[0][0] if heap else None
            heapq.heappush(heap, (job.when, job.id, job))
            if self.on_timer is not None and (first is None or job.when < first):
                self.on_timer(max(0.0, job.when - self.clock.time()))
            return
        job.state = JobState.QUEUED
        function = job.function
        function.queues[job.priority].append(job)
        function.queued[job.priority] += 1
        if function.sleepers:
            self._wake(function)

    def _requeue(self, job: Job) -> None:
        """Give a job back to the front of its queue."""
        job.state = JobState.QUEUED
        job.worker = None
        job.numerator = job.denominator = b"0"
        function = job.function
        function.queues[job.priority].appendleft(job)
        function.queued[job.priority] += 1
        if function.sleepers:
            self._wake(function)

    def _wake(self, function: Function) -> None:
        """Send NOOP to sleeping workers that can run ``function``."""
        limit = self.options.worker_wakeup or len(function.sleepers)
        for session in list(function.sleepers)[:limit]:
            session.noop_sent = True
            self._unsleep(session)
            session.peer.send(T.NOOP)

    def _unsleep(self, session: Session) -> None:
        session.sleeping = False
        for function in session.abilities:
            function.sleepers.pop(session, None)

    # ------------------------------------------------------------------ workers

    def can_do(self, session: Session, name: bytes, timeout: int = 0) -> None:
        """CAN_DO / CAN_DO_TIMEOUT."""
        function = self.function(name)
        if function not in session.abilities:
            session.order.append(function)
            function.workers[session] = None
            if session.sleeping and not session.noop_sent:
                if function.total_queued:
                    self._unsleep(session)
                    session.noop_sent = True
                    session.peer.send(T.NOOP)
                else:
                    function.sleepers[session] = None
        session.abilities[function] = max(0, timeout)

    def cant_do(self, session: Session, name: bytes) -> None:
        """CANT_DO."""
        function = self.functions.get(name)
        if function is not None and function in session.abilities:
            self._drop_ability(session, function)

    def reset_abilities(self, session: Session) -> None:
        """RESET_ABILITIES."""
        for function in list(session.abilities):
            self._drop_ability(session, function)

    def _drop_ability(self, session: Session, function: Function) -> None:
        del session.abilities[function]
        session.order.remove(function)
        function.workers.pop(session, None)
        function.sleepers.pop(session, None)

    def set_client_id(self, session: Session, client_id: bytes) -> None:
        """SET_CLIENT_ID (shown by the ``workers`` admin command)."""
        session.client_id = client_id or b"-"

    def pre_sleep(self, session: Session) -> None:
        """PRE_SLEEP: the worker waits for a NOOP; send one now if work is waiting."""
        session.sleeping = True
        session.noop_sent = False
        for function in session.order:
            if function.total_queued:
                self._unsleep(session)
                session.noop_sent = True
                session.peer.send(T.NOOP)
                return
        for function in session.abilities:
            function.sleepers[session] = None

    def grab(self, session: Session, mode: GrabMode = GrabMode.PLAIN) -> Job | None:
        """GRAB_JOB / _UNIQ / _ALL: assign the best waiting job or answer NO_JOB."""
        if session.sleeping:
            self._unsleep(session)
        session.noop_sent = False
        if self.draining:
            session.peer.send(T.NO_JOB)
            return None
        order = session.order
        for priority in (0, 1, 2):
            for index, function in enumerate(order):
                if not function.queued[priority]:
                    continue
                job = function.pop(priority)
                if job is None:
                    continue
                if self.options.round_robin and len(order) > 1:
                    order.append(order.pop(index))
                self._assign(session, job, mode)
                return job
        session.peer.send(T.NO_JOB)
        return None

    def _assign(self, session: Session, job: Job, mode: GrabMode) -> None:
        job.state = JobState.RUNNING
        job.worker = session
        job.assignment += 1
        session.jobs.add(job)
        function = job.function
        function.running += 1
        timeout = session.abilities.get(function, 0)
        if timeout:
            deadline = self.clock.monotonic() + timeout
            heap = self._timeout_heap
            first = heap[0][0] if heap else None
            heapq.heappush(heap, (deadline, next(self._seq), job, job.assignment))
            if self.on_timer is not None and (first is None or deadline < first):
                self.on_timer(float(timeout))
        ptype = _ASSIGN[mode]
        if mode == GrabMode.PLAIN:
            session.peer.send(ptype, job.handle, function.name, job.data)
        elif mode == GrabMode.UNIQ:
            session.peer.send(ptype, job.handle, function.name, job.unique, job.data)
        else:
            session.peer.send(
                ptype, job.handle, function.name, job.unique, job.reducer or b"", job.data
            )

    def _owned(
        self, session: Session, handle: bytes, text: bytes = b"Job given in work result not found"
    ) -> Job | None:
        """The running job ``handle`` if this worker holds it. A result for a job taken
        from this worker (timeout, cancel) is dropped silently; any other is answered
        with gearmand's ERROR JOB_NOT_FOUND."""
        job = self.jobs.get(handle)
        if job is None or job.worker is not session:
            if handle not in session.timed_out:
                session.peer.send(T.ERROR, b"JOB_NOT_FOUND", text)
            return None
        return job

    def work_status(self, session: Session, handle: bytes, num: bytes, den: bytes) -> None:
        """WORK_STATUS: remember the progress and forward it."""
        job = self._owned(session, handle)
        if job is None:
            return
        job.numerator = num
        job.denominator = den
        for client in job.listeners:
            client.peer.send(T.WORK_STATUS, handle, num, den)

    def work_update(self, session: Session, ptype: int, handle: bytes, data: bytes) -> None:
        """WORK_DATA / WORK_WARNING: forward to every listener."""
        job = self._owned(session, handle, b"Job does not exist on server")
        if job is None:
            return
        for client in job.listeners:
            client.peer.send(ptype, handle, data)

    def work_complete(self, session: Session, handle: bytes, data: bytes) -> None:
        """WORK_COMPLETE: forward and finish."""
        job = self._owned(session, handle)
        if job is None:
            return
        for client in job.listeners:
            client.peer.send(T.WORK_COMPLETE, handle, data)
        self._finish(job)

    def work_fail(self, session: Session, handle: bytes) -> None:
        """WORK_FAIL: forward and finish."""
        job = self._owned(session, handle)
        if job is None:
            return
        self._fail(job)

    def work_exception(self, session: Session, handle: bytes, data: bytes) -> None:
        """WORK_EXCEPTION: to clients that asked for exceptions; WORK_FAIL to the rest."""
        job = self._owned(
            session, handle, b"An exception was received for a job that does not exist"
        )
        if job is None:
            return
        for client in job.listeners:
            if client.exceptions:
                client.peer.send(T.WORK_EXCEPTION, handle, data)
            else:
                client.peer.send(T.WORK_FAIL, handle)
        self._finish(job)

    def _fail(self, job: Job) -> None:
        for client in job.listeners:
            client.peer.send(T.WORK_FAIL, job.handle)
        self._finish(job)

    def _lose_job(self, job: Job) -> None:
        """The worker running ``job`` went away or timed out: retry or give up."""
        job.failures += 1
        if self.options.job_retries and job.failures >= self.options.job_retries:
            self._fail(job)  # _finish releases the worker and the running count
            return
        if not job.background and not job.listeners:
            self._finish(job)  # nobody is waiting for this result any more
            return
        worker = job.worker
        if worker is not None:
            worker.jobs.discard(job)
        job.function.running -= 1
        self._requeue(job)

    def _finish(self, job: Job) -> None:
        """Final outcome: remove the job everywhere (and from the store)."""
        state = job.state
        job.state = JobState.DONE
        function = job.function
        if state == JobState.QUEUED:
            function.queued[job.priority] -= 1
        elif state == JobState.SCHEDULED:
            function.scheduled -= 1
        elif state == JobState.RUNNING:
            function.running -= 1
            if job.worker is not None:
                job.worker.jobs.discard(job)
        job.worker = None
        self.jobs.pop(job.handle, None)
        key = job.key
        if key is not None and function.unique.get(key) is job:
            del function.unique[key]
        for client in job.listeners:
            client.listening.discard(job)
        for client in job.creators:
            client.listening.discard(job)
            if state != JobState.PENDING:
                client.peer.send(T.JOB_CREATED, job.handle)
        job.listeners.clear()
        job.creators.clear()
        if job.stored and self.persister is not None:
            job.stored = False
            self.persister.forget(job.id)

    # ------------------------------------------------------------------- status

    def get_status(self, session: Session, handle: bytes) -> None:
        """GET_STATUS: known, running, numerator, denominator (all zero if unknown)."""
        job = self.jobs.get(handle)
        if job is None or job.state == JobState.PENDING:
            session.peer.send(T.STATUS_RES, handle, b"0", b"0", b"0", b"0")
            return
        running = b"1" if job.state == JobState.RUNNING else b"0"
        session.peer.send(T.STATUS_RES, handle, b"1", running, job.numerator, job.denominator)

    def get_status_unique(self, session: Session, unique: bytes) -> None:
        """GET_STATUS_UNIQUE: like GET_STATUS plus the number of waiting clients."""
        job = None
        for function in self.functions.values():
            job = function.unique.get(unique)
            if job is not None and job.state != JobState.PENDING:
                break
        if job is None or job.state == JobState.PENDING:
            session.peer.send(T.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0")
            return
        running = b"1" if job.state == JobState.RUNNING else b"0"
        session.peer.send(
            T.STATUS_RES_UNIQUE,
            unique,
            b"1",
            running,
            job.numerator,
            job.denominator,
            str(len(job.listeners)).encode(),
        )

    # ------------------------------------------------------------------- timers

    def run_timers(self) -> float | None:
        """Fire due timers; return the delay until the next one (None: no timer)."""
        now = self.clock.time()
        heap = self._epoch_heap
        while heap and heap[0][0] <= now:
            _, _, job = heapq.heappop(heap)
            if job.state == JobState.SCHEDULED:
                job.state = JobState.QUEUED
                function = job.function
                function.scheduled -= 1
                function.queues[job.priority].append(job)
                function.queued[job.priority] += 1
                if function.sleepers:
                    self._wake(function)
        mono = self.clock.monotonic()
        theap = self._timeout_heap
        while theap and theap[0][0] <= mono:
            _, _, job, assignment = heapq.heappop(theap)
            if job.state == JobState.RUNNING and job.assignment == assignment:
                if job.worker is not None:
                    job.worker.timed_out.add(job.handle)
                self._lose_job(job)
        delays = []
        if heap:
            delays.append(max(0.0, heap[0][0] - now))
        if theap:
            delays.append(max(0.0, theap[0][0] - mono))
        return min(delays) if delays else None

    # -------------------------------------------------------------------- admin

    def cancel(self, handle: bytes) -> bool:
        """Admin ``cancel job``: really remove the job (and from the store)."""
        job = self.jobs.get(handle)
        if job is None or job.state == JobState.PENDING:
            return False
        if job.state == JobState.RUNNING and job.worker is not None:
            job.worker.timed_out.add(handle)
        self._fail(job)
        return True

    def drop_function(self, name: bytes) -> bool:
        """Admin ``drop function``: only a function with no jobs and no workers."""
        function = self.functions.get(name)
        if function is None or not function.is_idle():
            return False
        del self.functions[name]
        return True

    def set_max_queue(self, name: bytes, limits: Iterable[int]) -> None:
        """Admin ``maxqueue``: per-priority limits, 0 meaning unlimited."""
        self.function(name).max_queue = [max(0, n) for n in limits]

    @property
    def next_id(self) -> int:
        """The id the next job will get."""
        return self._next_id
