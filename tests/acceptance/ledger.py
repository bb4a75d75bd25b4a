"""What the clients sent and what the server answered, kept to judge a replay.

Each field of a :class:`Job` is written by one thread only (the submitter sets
``handle``/``acked``/``refused``, the completer sets ``completion``, the holder sets
``held``), so the load threads need no lock for them; only creating jobs takes one.
:meth:`Ledger.expected` turns those answers into what a replay may and must contain:

- acknowledged (JOB_CREATED) and not completed: exactly once;
- completion known durable (WORK_COMPLETE, then a background submit acknowledged
  after the server had processed it): never;
- completion sent but not known durable, or submit sent but not answered: at most once;
  after a clean stop (SIGTERM) a completion the server processed counts as durable.
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PRIORITIES = ("high", "normal", "low")
PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}


class Completion(enum.Enum):
    """How far a worker got with finishing a job."""

    NONE = "none"
    SENT = "sent"  # WORK_COMPLETE written; the server may not have read it
    PROCESSED = "processed"  # the server answered a later ECHO: removal queued, not durable
    DURABLE = "durable"  # followed by an acknowledged submit: the removal is durable


class Expect(enum.Enum):
    """What a replay must do with one job."""

    ONCE = "exactly once"
    NEVER = "never"
    MAYBE = "at most once"


@dataclass(eq=False)
class Job:
    """One submitted job. ``data`` is unique per job and carries its sequence number."""

    data: bytes
    function: bytes
    priority: str = "normal"
    unique: bytes = b""
    when: int | None = None
    reducer: bytes | None = None
    handle: bytes | None = None
    acked: bool = False
    refused: bytes | None = None
    completion: Completion = Completion.NONE
    held: bool = False
    #: the store may lose it by design (acknowledged before a memcached restart)
    may_be_lost: bool = False
    #: seconds the submit call took (one-by-one submits only)
    seconds: float = 0.0
    #: time.monotonic() when the answer arrived
    answered_at: float = 0.0

    @property
    def job_id(self) -> int:
        """The numeric id at the end of the handle (``H:<prefix>:<id>``)."""
        assert self.handle is not None, self
        return int(self.handle.rsplit(b":", 1)[1])

    def expect(self, clean_stop: bool = False) -> Expect:
        """What a replay of the store must contain for this job.

        ``clean_stop``: the server exited on SIGTERM, which writes every removal it had
        queued, so a completion the server processed is as good as a durable one.
        """
        if self.completion is Completion.DURABLE:
            return Expect.NEVER
        if self.completion is Completion.PROCESSED:
            return Expect.NEVER if clean_stop else Expect.MAYBE
        if self.completion is Completion.SENT:
            return Expect.MAYBE
        if self.acked:
            return Expect.MAYBE if self.may_be_lost else Expect.ONCE
        return Expect.MAYBE  # in flight or refused: the client was promised nothing

    def describe(self) -> str:
        """One line for assertion messages."""
        return (
            f"{self.data[:40]!r} fn={self.function!r} prio={self.priority} "
            f"handle={self.handle!r} acked={self.acked} refused={self.refused!r} "
            f"completion={self.completion.value} held={self.held}"
        )


class Ledger:
    """Every job a test submitted, by its data."""

    def __init__(self, tag: str) -> None:
        self.tag = tag.encode()
        self.jobs: dict[bytes, Job] = {}
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def new(
        self,
        function: bytes,
        priority: str = "normal",
        *,
        unique: bool = False,
        when: int | None = None,
        reducer: bytes | None = None,
        pad: int = 0,
    ) -> Job:
        """Create (and register) a job with fresh data ``<tag>:<seq>|<padding>``."""
        with self._lock:
            seq = next(self._seq)
            data = b"%s:%07d|" % (self.tag, seq) + b"x" * pad
            job = Job(
                data,
                function,
                priority,
                b"u-%s-%d" % (self.tag, seq) if unique else b"",
                when,
                reducer,
            )
            self.jobs[data] = job
            return job

    def adopt(self, jobs: Iterable[Job]) -> None:
        """Carry jobs over from an earlier ledger (e.g. epoch jobs still scheduled)."""
        with self._lock:
            for job in jobs:
                self.jobs[job.data] = job

    def __iter__(self) -> Iterator[Job]:
        with self._lock:
            return iter(list(self.jobs.values()))

    def __len__(self) -> int:
        return len(self.jobs)

    def acked(self) -> list[Job]:
        """Jobs the server acknowledged."""
        return [job for job in self if job.acked]

    def get(self, data: bytes) -> Job | None:
        """The job whose data is ``data``."""
        return self.jobs.get(data)
