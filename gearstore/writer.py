"""The store writer: group commit between the engine and a queue store.

Adds and removals made while one batch is being written collect into the next batch,
so a thousand concurrent background submits cost one store transaction. The blocking
adapter runs in one worker thread; the event loop never waits on it.

When the store fails, the submitters of that batch get an ERROR and the writer enters
the *down* state: new background submits are refused at once (no client waits on a
dead database), removals are kept and retried, and a probe retries the store with
exponential backoff until it answers. Each state change is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from gearstore.stores.base import QueueStore, StoredJob, StoreError

if TYPE_CHECKING:
    from gearstore.engine.core import Engine
    from gearstore.engine.model import Job

log = logging.getLogger("gearstore.store")

MAX_BATCH = 10_000
BACKOFF_START = 0.05
BACKOFF_MAX = 2.0
#: never a job id (ids start at 1): removing it makes a probe touch the backend
PROBE_ID = 0


def to_stored(job: Job) -> StoredJob:
    """The persistent form of an engine job."""
    return StoredJob(
        job.id, job.function.name, job.unique, job.priority, job.when, job.data, job.reducer
    )


class StoreWriter:
    """Batches persistence work for one store; implements the engine's Persister."""

    def __init__(self, store: QueueStore, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.engine: Engine | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gearstore-store")
        self._adds: list[Job] = []
        self._removes: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.down_since: float | None = None
        self.last_error = ""
        self._backoff = BACKOFF_START
        self.batches = 0
        self.jobs_written = 0

    @property
    def healthy(self) -> bool:
        """False while the store is failing."""
        return self.down_since is None

    # ---------------------------------------------------------- Persister API

    def persist(self, job: Job) -> None:
        """Queue ``job`` for the next batch (or refuse it at once while down)."""
        if self.down_since is not None:
            self.loop.call_soon(self._refuse, job)
            return
        self._adds.append(job)
        self._kick()

    def forget(self, job_id: int) -> None:
        """Queue the removal of a finished job; retried until the store takes it."""
        self._removes.append(job_id)
        if self.down_since is None:
            self._kick()

    # -------------------------------------------------------------- batching

    def _refuse(self, job: Job) -> None:
        assert self.engine is not None
        self.engine.persist_failed(job, self._error_text())

    def _error_text(self) -> bytes:
        return f"job not stored: the queue store is unavailable ({self.last_error})".encode()

    def _kick(self) -> None:
        if self._task is None:
            self._idle.clear()
            self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._adds or self._removes:
                if self.down_since is not None:
                    await asyncio.sleep(self._backoff)
                    self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                await self._write_one_batch()
        finally:
            self._task = None
            self._idle.set()

    async def _write_one_batch(self) -> None:
        adds = self._adds[:MAX_BATCH]
        del self._adds[:MAX_BATCH]
        removes = self._removes
        self._removes = []
        stored = [to_stored(job) for job in adds]
        try:
            await self.loop.run_in_executor(
                self._executor,
                self.store.apply,
                stored,
                removes or ([PROBE_ID] if not adds else []),
            )
        except Exception as exc:
            message = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
            # the backend may have committed although it reported failure: make sure a
            # refused job cannot come back after a restart
            self._removes[:0] = removes + [job.id for job in adds]
            self._went_down(message)
            for job in adds:
                self._refuse(job)
            if not isinstance(exc, StoreError):
                log.error("store adapter raised an unexpected error", exc_info=exc)
            return
        self.batches += 1
        self.jobs_written += len(adds)
        if self.down_since is not None:
            log.warning(
                "queue store recovered after %.1f s; background submits are accepted again",
                time.monotonic() - self.down_since,
            )
            self.down_since = None
            self._backoff = BACKOFF_START
        engine = self.engine
        assert engine is not None
        for job in adds:
            engine.persisted(job)

    def _went_down(self, message: str) -> None:
        self.last_error = message
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error(
                "queue store unavailable: %s; background submits get ERROR until it recovers",
                message,
            )
        if not self._removes:
            # keep probing even when nothing is left to write, so recovery is noticed
            self._removes.append(PROBE_ID)

    # ------------------------------------------------------------- lifecycle

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close the store in its thread and stop the thread."""
        try:
            await self.loop.run_in_executor(self._executor, self.store.close)
        finally:
            self._executor.shutdown(wait=False)
