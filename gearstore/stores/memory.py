"""In-memory store for engine unit tests and ``-q builtin``: nothing survives a restart.

Tests can inspect :attr:`MemoryStore.jobs` and make the next writes fail with
:meth:`MemoryStore.fail_next`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from gearstore.stores.base import QueueStore, StoredJob, StoreError, StoreUnavailable


class MemoryStore(QueueStore):
    """A dict keyed by job id."""

    description = "memory (not persistent)"

    def __init__(self) -> None:
        self.jobs: dict[int, StoredJob] = {}
        self.batches = 0
        self._failures: list[str] = []

    def fail_next(self, message: str = "simulated store failure", times: int = 1) -> None:
        """Make the next ``times`` calls to :meth:`apply` raise StoreUnavailable."""
        self._failures.extend([message] * times)

    def open(self) -> None:
        """Nothing to open."""

    def replay(self) -> Iterator[StoredJob]:
        """Yield the jobs in id order."""
        for key in sorted(self.jobs):
            yield self.jobs[key]

    def apply(self, add: Sequence[StoredJob], remove: Sequence[int]) -> None:
        """Apply the batch to the dict, or fail as scheduled by :meth:`fail_next`."""
        if self._failures:
            raise StoreUnavailable(self._failures.pop(0))
        clash = [job.id for job in add if job.id in self.jobs]
        if clash:
            raise StoreError(f"job id {clash[0]} is already stored")
        for job in add:
            self.jobs[job.id] = job
        for job_id in remove:
            self.jobs.pop(job_id, None)
        self.batches += 1

    def close(self) -> None:
        """Nothing to close."""
