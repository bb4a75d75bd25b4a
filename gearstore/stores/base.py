"""The queue-store contract: what every persistence adapter implements.

Adapters are small and blocking: open, replay, apply one batch, close. They do not
batch, retry or reconnect on their own; the core's store writer
(:mod:`gearstore.writer`) calls them from one worker thread and owns all of that.
Every adapter translates its driver's exceptions into :class:`StoreError` subclasses
at the boundary, so the core never has to know which driver is underneath.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


class Priority(enum.IntEnum):
    """Job priority. Lower value runs first (the order used for queue indexes)."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


@dataclass(frozen=True, slots=True)
class StoredJob:
    """One background job as it is persisted.

    ``id`` is assigned by the server, increases monotonically, and is the only key:
    replay order and the job handle are derived from it, never from user strings.
    """

    id: int
    function: bytes
    unique: bytes
    priority: Priority
    when: int | None
    data: bytes
    reducer: bytes | None = None


class StoreError(Exception):
    """A store operation failed. The message is written for an operator."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached or refused the write; retrying later may work."""


class StoreCorrupt(StoreError):
    """Stored data could not be read back; it needs an operator's attention."""


class StoreLocked(StoreError):
    """Another process already has this store open."""


class SchemaTooNew(StoreError):
    """The store's schema was written by a newer gearstore than this one."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Everything an adapter needs to open its backend, parsed once from the CLI."""

    kind: str
    db: str | None = None
    table: str | None = None
    prefix: str = "gearstore"
    migrate: bool = True
    sqlite_synchronous: str = "FULL"


class QueueStore(abc.ABC):
    """One persistence backend. All methods block; the store writer calls them from
    a single worker thread, never concurrently."""

    #: short name used in logs, e.g. ``"sqlite /var/lib/gearstore/jobs.db"``
    description: str = "store"

    @abc.abstractmethod
    def open(self) -> None:
        """Connect, take any lock, create or upgrade the schema."""

    @abc.abstractmethod
    def replay(self) -> Iterator[StoredJob]:
        """Yield every stored job exactly once, in increasing id order."""

    @abc.abstractmethod
    def apply(self, add: Sequence[StoredJob], remove: Sequence[int]) -> None:
        """Persist one batch. All-or-nothing and durable when it returns.

        Removing an id that is not stored is not an error. Raises :class:`StoreError`
        when the batch could not be written (then none of it was).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and locks. Safe to call more than once."""
