"""The engine's in-memory objects: jobs, functions and the sessions of connected peers.

These are plain slotted classes rather than dataclasses because the engine creates one
Job per submit on its hottest path.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Protocol

from gearstore.stores.base import Priority


class Peer(Protocol):
    """What the engine needs from a connection: a way to send it a packet."""

    def send(self, ptype: int, *args: bytes) -> None:
        """Queue one packet (a server-to-peer packet type and its arguments)."""


class JobState(enum.IntEnum):
    """Where a job is in its life."""

    PENDING = 0  # background job waiting for its store batch to become durable
    SCHEDULED = 1  # epoch job whose time has not come
    QUEUED = 2
    RUNNING = 3
    DONE = 4


class GrabMode(enum.IntEnum):
    """Which JOB_ASSIGN form a GRAB asked for."""

    PLAIN = 0  # GRAB_JOB -> JOB_ASSIGN
    UNIQ = 1  # GRAB_JOB_UNIQ -> JOB_ASSIGN_UNIQ
    ALL = 2  # GRAB_JOB_ALL -> JOB_ASSIGN_ALL


class Job:
    """One job, foreground or background."""

    __slots__ = (
        "assignment",
        "background",
        "creators",
        "data",
        "denominator",
        "failures",
        "function",
        "handle",
        "id",
        "key",
        "listeners",
        "numerator",
        "priority",
        "reducer",
        "state",
        "stored",
        "unique",
        "when",
        "worker",
    )

    def __init__(
        self,
        job_id: int,
        handle: bytes,
        function: Function,
        unique: bytes,
        data: bytes,
        priority: Priority,
        background: bool,
        when: int | None = None,
        reducer: bytes | None = None,
    ) -> None:
        self.id = job_id
        self.handle = handle
        self.function = function
        self.unique = unique
        self.data = data
        self.priority = priority
        self.background = background
        self.when = when
        self.reducer = reducer
        #: coalescing key: None when the job never coalesces (empty unique)
        self.key: bytes | None = (data if unique == b"-" else unique) or None
        #: foreground clients that receive the WORK_* packets
        self.listeners: list[Session] = []
        #: sessions waiting for JOB_CREATED while the job is PENDING
        self.creators: list[Session] = []
        self.worker: Session | None = None
        #: increases at every assignment, so a stale timeout can be recognised
        self.assignment = 0
        self.state = JobState.PENDING
        self.stored = False
        self.failures = 0
        self.numerator = b"0"
        self.denominator = b"0"


class Function:
    """Per-function state: three priority queues, capable workers, unique index."""

    __slots__ = (
        "max_queue",
        "name",
        "queued",
        "queues",
        "running",
        "scheduled",
        "sleepers",
        "unique",
        "workers",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        # Queues may hold stale entries (jobs cancelled while queued); they are skipped
        # when popped, and ``queued`` keeps the true counts.
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        self.queued = [0, 0, 0]
        self.running = 0
        #: epoch jobs whose time has not come
        self.scheduled = 0
        #: capable workers, in registration order
        self.workers: dict[Session, None] = {}
        #: capable workers that sent PRE_SLEEP and have not been woken since
        self.sleepers: dict[Session, None] = {}
        #: coalescing key -> live job
        self.unique: dict[bytes, Job] = {}
        #: per-priority queue limits (0 = unlimited)
        self.max_queue = [0, 0, 0]

    @property
    def total_queued(self) -> int:
        """Jobs waiting in the three queues."""
        q = self.queued
        return q[0] + q[1] + q[2]

    def pop(self, priority: int) -> Job | None:
        """Take the next live QUEUED job of one priority, dropping stale entries."""
        queue = self.queues[priority]
        while queue:
            job = queue.popleft()
            if job.state == JobState.QUEUED and job.function is self:
                self.queued[priority] -= 1
                return job
        return None

    def is_idle(self) -> bool:
        """True when nothing refers to this function any more."""
        return not (
            self.total_queued or self.running or self.scheduled or self.workers or self.unique
        )


class Session:
    """Engine-side state of one connection; a connection can be client and worker."""

    __slots__ = (
        "abilities",
        "client_id",
        "exceptions",
        "jobs",
        "listening",
        "noop_sent",
        "order",
        "peer",
        "peer_name",
        "sleeping",
        "timed_out",
    )

    def __init__(self, peer: Peer, peer_name: str = "-") -> None:
        self.peer = peer
        self.peer_name = peer_name
        self.client_id = b"-"
        #: function -> CAN_DO_TIMEOUT seconds (0 = none)
        self.abilities: dict[Function, int] = {}
        #: the order in which GRAB looks at functions (rotated under round robin)
        self.order: list[Function] = []
        self.jobs: set[Job] = set()
        self.listening: set[Job] = set()
        self.exceptions = False
        self.sleeping = False
        self.noop_sent = False
        #: handles of jobs taken from this worker by CAN_DO_TIMEOUT: late results are dropped
        self.timed_out: set[bytes] = set()
