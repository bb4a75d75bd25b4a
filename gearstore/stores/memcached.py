"""memcached queue store (``-q memcached --db HOST:PORT[,HOST:PORT...]``).

Data layout. Every key is ASCII built from the prefix and numbers only, never from a
function name or unique key (gearmand's ``prefix+function-unique`` keys broke on ``-``
and spaces):

  {prefix}:wm                  watermark (format, lo, hi): no job id outside lo..hi
  {prefix}:b:{block}           marker: ids block*4096 .. block*4096+4095 may hold jobs
  {prefix}:j:{id}              a job's head: format, chunk count, record length, chunk
                               token, then the first part of the job's record
  {prefix}:c:{id}:{token}:{n}  part n (1, 2, ...) of a record too big for one item

A record is the StoredJob packed with ``struct`` (id, flags, priority, when, three
lengths) followed by function, unique, reducer and data: binary-safe, no escaping.
Records longer than one memcached item (``item_size_max`` from ``stats settings``)
continue in chunk items; the token is random per write, so a rolled-back write never
touches the chunks of a job already stored. All keys of one job live on its *home*
server, chosen by rendezvous hashing of the id, so losing a server loses only the jobs
homed there. The watermark and the markers are written to every server.

Replay never uses ``stats cachedump`` (empty on memcached 1.6). It reads the watermark
from every server (lowest lo, highest hi), then the markers of the blocks in lo..hi,
then the heads of the ids in marked blocks, 4,096 per multi-get, from every server (so
a job is found even after --db changed), then each head's chunks. Gaps cost a key in a
multi-get; unmarked blocks cost nothing, so a job queued for a week does not make
replay walk every id used since.

apply() sets the chunks, watermark and new markers, then ``add``s the heads (memcached's
add-if-absent, which also refuses an id already stored), then deletes the removed jobs
and the markers of blocks left empty. Replay finds a job by its head only, so anything
written ahead of the heads is harmless; if the batch fails, the heads and chunks it
wrote are deleted before StoreError is raised. See docs/stores-memcached.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError, MemcacheServerError

from gearstore.stores.base import (
    Priority,
    QueueStore,
    SchemaTooNew,
    StoreConfig,
    StoreCorrupt,
    StoredJob,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

FORMAT = 1
_HEAD = struct.Struct("<BIQ6s")  # format, chunk count, record length, chunk token
_RECORD = struct.Struct("<QBBqIII")  # id, flags, priority, when, len function/unique/reducer
_WATERMARK = struct.Struct("<BQQ")  # format, lo, hi
_HAS_WHEN, _HAS_REDUCER = 1, 2
_NO_TOKEN = bytes(6)
_PRIORITIES = tuple(Priority)

BLOCK = 4096  # ids per marker, and per replay multi-get
MARKER_BATCH = 10_000  # markers per multi-get
#: room left in an item for its key (<= 250 bytes) and memcached's item header
ITEM_OVERHEAD = 1024
DEFAULT_ITEM_SIZE_MAX = 1024 * 1024
MAX_PREFIX = 200  # leaves room for ":c:{id}:{token}:{n}" within memcached's 250 bytes
CONNECT_TIMEOUT = 3.0
IO_TIMEOUT = 15.0
_ERRORS = (MemcacheError, OSError)


def parse_servers(db: str | None) -> list[tuple[str, int]]:
    """Parse ``host:port[,host:port...]`` (port defaults to 11211, IPv6 as ``[::1]:11211``)."""
    if not db or not db.strip():
        raise StoreError("the memcached store needs --db HOST:PORT[,HOST:PORT...]")
    servers: list[tuple[str, int]] = []
    for raw in db.split(","):
        spec = raw.strip()
        host, port = spec, "11211"
        if spec.startswith("["):
            host, _, rest = spec[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else port
        elif spec.count(":") == 1:
            host, port = spec.split(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreError(f"bad memcached server {spec!r} in --db {db!r}; use HOST:PORT")
        if (host, int(port)) in servers:
            raise StoreError(f"memcached server {spec!r} is listed twice in --db {db!r}")
        servers.append((host, int(port)))
    return servers


def check_prefix(prefix: str) -> bytes:
    """Return the prefix as key bytes, or raise StoreError if memcached cannot use it."""
    raw = prefix.encode("utf-8", "replace")
    if not 0 < len(raw) <= MAX_PREFIX or any(b <= 0x20 or b >= 0x7F for b in raw):
        raise StoreError(
            f"memcached key prefix {prefix!r} is unusable: it must be 1 to {MAX_PREFIX} "
            "printable ASCII characters without spaces (memcached keys are at most 250 "
            "bytes and may not contain spaces or control characters)"
        )
    return raw


def encode(job: StoredJob, item_budget: int) -> tuple[bytes, bytes, list[bytes]]:
    """Pack a job into (head value, chunk token, chunk values); each fits ``item_budget``."""
    flags = (_HAS_WHEN if job.when is not None else 0) | (
        _HAS_REDUCER if job.reducer is not None else 0
    )
    reducer = job.reducer or b""
    lengths = (len(job.function), len(job.unique), len(reducer))
    try:
        fixed = _RECORD.pack(job.id, flags, int(job.priority), job.when or 0, *lengths)
    except struct.error as exc:
        raise StoreError(f"job {job.id} cannot be stored: a number is out of range") from exc
    record = b"".join((fixed, job.function, job.unique, reducer, job.data))
    first = item_budget - _HEAD.size
    if len(record) <= first:
        return _HEAD.pack(FORMAT, 0, len(record), _NO_TOKEN) + record, _NO_TOKEN, []
    token = os.urandom(len(_NO_TOKEN))
    chunks = [record[at : at + item_budget] for at in range(first, len(record), item_budget)]
    return _HEAD.pack(FORMAT, len(chunks), len(record), token) + record[:first], token, chunks


def decode_head(value: bytes) -> tuple[int, int, bytes]:
    """Return (chunk count, record length, token) from a head value."""
    if len(value) < _HEAD.size:
        raise StoreCorrupt(f"a job head of {len(value)} bytes is too short")
    fmt, nchunks, length, token = _HEAD.unpack_from(value)
    if fmt > FORMAT:
        raise SchemaTooNew(f"memcached holds jobs in format {fmt}; upgrade gearstore")
    return nchunks, length, token


def decode_record(buf: bytes, length: int, start: int = 0) -> StoredJob:
    """Unpack the record that fills ``buf`` from ``start`` on into a StoredJob."""
    if len(buf) - start != length or length < _RECORD.size:
        raise StoreCorrupt(f"job record is {len(buf) - start} bytes, its head says {length}")
    job_id, flags, priority, when, nf, nu, nr = _RECORD.unpack_from(buf, start)
    at = start + _RECORD.size
    end = at + nf + nu + nr
    if end > len(buf) or priority >= len(_PRIORITIES):
        raise StoreCorrupt(f"job {job_id}'s record does not decode")
    return StoredJob(
        job_id,
        buf[at : at + nf],
        buf[at + nf : at + nf + nu],
        _PRIORITIES[priority],
        when if flags & _HAS_WHEN else None,
        buf[end:],
        buf[end - nr : end] if flags & _HAS_REDUCER else None,
    )


@dataclass
class _Writes:
    """What one apply() sends to one server."""

    chunks: dict[bytes, bytes] = field(default_factory=dict)
    meta: dict[bytes, bytes] = field(default_factory=dict)  # watermark and new markers
    heads: dict[bytes, bytes] = field(default_factory=dict)
    deletes: list[bytes] = field(default_factory=list)  # heads, then chunks, then markers


class MemcachedStore(QueueStore):
    """Jobs as memcached items on one or more servers, replayed by watermark and markers."""

    def __init__(self, config: StoreConfig) -> None:
        self._prefix = check_prefix(config.prefix)
        self._servers = parse_servers(config.db)
        self._names = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self._servers]
        self._node_keys = [hashlib.blake2b(n.encode()).digest()[:32] for n in self._names]
        self.description = f"memcached {','.join(self._names)} (prefix {config.prefix})"
        self._clients: list[Client] = []
        self._answered: list[bool] = []  # which servers answered at open()
        self._item_budget = DEFAULT_ITEM_SIZE_MAX - ITEM_OVERHEAD
        self._lo, self._hi = 1, 0  # no live id outside lo..hi; lo > hi means none
        self._reset()

    def _reset(self) -> None:
        self._written: tuple[int, int] | None = None  # watermark every server holds
        self._complete = False  # _live holds every stored id: only then may lo rise
        self._live: set[int] = set()
        self._per_block: Counter[int] = Counter()  # live ids per block
        self._marked: set[int] = set()  # blocks this instance has marked on every server
        self._unmark: set[int] = set()  # marked blocks replay found empty
        self._chunked: dict[int, tuple[bytes, int]] = {}  # id -> (token, chunk count)
        self._away: dict[int, int] = {}  # id -> server, for jobs found off their home
        self._pending: dict[int, list[bytes]] = {}  # keys a failed rollback left behind

    # -- keys and routing -------------------------------------------------------------

    def _head_key(self, job_id: int) -> bytes:
        return b"%s:j:%d" % (self._prefix, job_id)

    def _chunk_keys(self, job_id: int, token: bytes, count: int) -> list[bytes]:
        base = b"%s:c:%d:%s:" % (self._prefix, job_id, token.hex().encode())
        return [base + b"%d" % n for n in range(1, count + 1)]

    def _marker_key(self, block: int) -> bytes:
        return b"%s:b:%d" % (self._prefix, block)

    def _home(self, job_id: int) -> int:
        """Index of the server a job lives on: highest keyed BLAKE2b of the id wins."""
        if len(self._servers) == 1:
            return 0
        raw = job_id.to_bytes(8, "little")
        scores = [hashlib.blake2b(raw, digest_size=8, key=k).digest() for k in self._node_keys]
        return scores.index(max(scores))

    def server_for(self, job_id: int) -> str:
        """The ``host:port`` that holds (or would hold) job ``job_id``."""
        return self._names[self._away.get(job_id, self._home(job_id))]

    @property
    def watermark(self) -> tuple[int, int]:
        """(lo, hi): no job id outside lo..hi; lo > hi means the store is empty."""
        return self._lo, self._hi

    # -- QueueStore -------------------------------------------------------------------

    def open(self) -> None:
        """Connect to every server, read its settings and watermark, warn about eviction."""
        self.close()
        self._reset()
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        wm_key = self._prefix + b":wm"
        sizes, lows, highs = [], [], []
        for (host, port), name in zip(self._servers, self._names, strict=True):
            client = Client(
                (host, port),
                connect_timeout=CONNECT_TIMEOUT,
                timeout=IO_TIMEOUT,
                no_delay=True,
                default_noreply=False,
            )
            self._clients.append(client)
            try:
                settings = client.stats("settings")
                watermark = client.get(wm_key)
            except _ERRORS as exc:
                log.warning(
                    "memcached %s did not answer (%s): jobs stored there are not replayed "
                    "and new jobs are refused until it is back",
                    name,
                    exc,
                )
                self._answered.append(False)
                continue
            self._answered.append(True)
            sizes.append(int(settings.get(b"item_size_max", DEFAULT_ITEM_SIZE_MAX)))
            if settings.get(b"evictions", b"on") != b"off":
                log.warning(
                    "memcached %s evicts items when its memory is full (started without -M): "
                    "queued jobs can be silently evicted; run it with -M and an -m big "
                    "enough for the whole queue",
                    name,
                )
            if watermark is not None:
                if len(watermark) != _WATERMARK.size:
                    raise StoreCorrupt(f"memcached {name}: {wm_key!r} is not a watermark")
                fmt, lo, hi = _WATERMARK.unpack(watermark)
                if fmt > FORMAT:
                    raise SchemaTooNew(f"memcached {name} holds format {fmt}; upgrade gearstore")
                lows.append(lo)
                highs.append(hi)
        if not any(self._answered):
            raise StoreUnavailable(
                f"no memcached server answered ({', '.join(self._names)}); start memcached "
                "or fix --db"
            )
        self._item_budget = min(sizes) - ITEM_OVERHEAD
        # Merging is safe in one direction only: a lower lo or a higher hi just scans more.
        self._lo, self._hi = (min(lows), max(highs)) if highs else (1, 0)
        self._complete = all(self._answered) and self._lo > self._hi

    def replay(self) -> Iterator[StoredJob]:
        """Yield every job in a marked block within lo..hi, in id order."""
        self._require_open()
        started, count = time.monotonic(), 0
        lo, hi = self._lo, self._hi
        answering = [i for i, up in enumerate(self._answered) if up]
        blocks = self._marked_blocks(lo, hi, answering)
        for block in blocks:
            ids = range(max(lo, block * BLOCK), min(hi + 1, (block + 1) * BLOCK))
            keys = [self._head_key(i) for i in ids]
            found: dict[bytes, tuple[int, bytes]] = {}
            for server in answering:
                for key, value in self._call(server, "read", Client.get_many, keys).items():
                    found.setdefault(key, (server, value))
            for job_id, key in zip(ids, keys, strict=True):
                hit = found.get(key)
                if hit is None:
                    continue
                job = self._load(job_id, *hit)
                if len(self._servers) > 1 and hit[0] != self._home(job_id):
                    self._away[job_id] = hit[0]
                if job_id not in self._live:
                    self._live.add(job_id)
                    self._per_block[job_id // BLOCK] += 1
                count += 1
                yield job
        if all(self._answered):
            self._complete = True
            self._lo = min(self._live) if self._live else self._hi + 1
            self._unmark = {b for b in blocks if not self._per_block[b]}
        log.info(
            "memcached replay: %d jobs in %d blocks of ids %d..%d in %.2f s",
            count,
            len(blocks),
            lo,
            hi,
            time.monotonic() - started,
        )

    def apply(self, add: Sequence[StoredJob], remove: Sequence[int]) -> None:
        """Write the adds (failing on an id already stored), then delete the removes."""
        self._require_open()
        self._flush_pending()
        if not add and not remove:
            return
        ids = [job.id for job in add]
        self._check_new(ids)
        removed = {i for i in remove if 0 <= i < 2**63}  # others cannot be stored
        plan: dict[int, _Writes] = {server: _Writes() for server in range(len(self._servers))}
        chunked: dict[int, tuple[bytes, int]] = {}
        for job in add:
            head, token, chunks = encode(job, self._item_budget)
            writes = plan[self._home(job.id)]
            writes.heads[self._head_key(job.id)] = head
            if chunks:
                chunked[job.id] = (token, len(chunks))
                keys = self._chunk_keys(job.id, token, len(chunks))
                writes.chunks.update(zip(keys, chunks, strict=True))
        known = {**self._chunked, **chunked}
        if not self._complete:
            known.update(self._lookup_chunks([i for i in removed if i not in known]))
        for job_id in removed:
            writes = plan[self._away.get(job_id, self._home(job_id))]
            writes.deletes.append(self._head_key(job_id))
            if job_id in known:
                writes.deletes.extend(self._chunk_keys(job_id, *known[job_id]))
        watermark = self._next_watermark(ids, removed)
        delta = self._block_delta(ids, removed)
        mark = {i // BLOCK for i in ids} - self._marked
        unmark = self._emptied(delta, watermark[1])
        for writes in plan.values():
            if watermark != self._written:
                writes.meta[self._prefix + b":wm"] = _WATERMARK.pack(FORMAT, *watermark)
            writes.meta.update((self._marker_key(b), b"") for b in sorted(mark))
            writes.deletes.extend(self._marker_key(b) for b in sorted(unmark))
        self._execute(plan)
        self._live.update(ids)
        self._live.difference_update(removed)
        self._per_block.update(delta)
        self._per_block = +self._per_block  # drop blocks counted down to zero
        self._marked = (self._marked | mark) - unmark
        self._unmark -= unmark
        self._chunked.update(chunked)
        for job_id in removed:
            self._chunked.pop(job_id, None)
            self._away.pop(job_id, None)
        self._lo, self._hi = self._written = watermark

    def close(self) -> None:
        """Close every connection; safe to call more than once."""
        for client in self._clients:
            client.close()
        self._clients, self._answered = [], []

    # -- apply's steps ----------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._clients:
            raise StoreError("the memcached store is not open; call open() first")

    def _check_new(self, ids: list[int]) -> None:
        """Raise StoreError, before writing anything, if an id is already stored."""
        if len(set(ids)) != len(ids):
            raise StoreError("a batch adds the same job id twice; nothing was written")
        if ids and not 0 <= min(ids) <= max(ids) < 2**63:
            raise StoreError("job ids must be between 0 and 2**63-1; nothing was written")
        if self._complete:
            stored = [i for i in ids if i in self._live]
        else:
            by_server: dict[int, list[bytes]] = {}
            for job_id in ids:
                by_server.setdefault(self._home(job_id), []).append(self._head_key(job_id))
            hits = [self._call(s, "read", Client.get_many, k) for s, k in by_server.items()]
            stored = [i for i in ids if any(self._head_key(i) in h for h in hits)]
        if stored:
            raise StoreError(f"job id {stored[0]} is already stored; nothing was written")

    def _lookup_chunks(self, ids: list[int]) -> dict[int, tuple[bytes, int]]:
        """Read the heads of jobs about to be removed to learn their chunk keys."""
        found: dict[int, tuple[bytes, int]] = {}
        for job_id in ids:
            server = self._away.get(job_id, self._home(job_id))
            head = self._call(server, "read", Client.get, self._head_key(job_id))
            if head is not None:
                nchunks, _, token = decode_head(head)
                if nchunks:
                    found[job_id] = (token, nchunks)
        return found

    def _next_watermark(self, ids: list[int], removed: set[int]) -> tuple[int, int]:
        """(lo, hi) after this batch: hi covers every add; lo rises past removed ids."""
        lo = min([self._lo, *ids])
        hi = max([self._hi, *ids])
        if not self._complete:
            return lo, hi  # an id replay did not see may still be stored: keep lo
        added, live = set(ids), self._live
        steps = len(live) + len(added) + BLOCK
        while lo <= hi and (lo in removed or (lo not in live and lo not in added)):
            lo += 1
            steps -= 1
            if not steps:  # a long run of gaps: finding the minimum is cheaper
                rest = [i for i in live | added if i not in removed]
                return (min(rest) if rest else hi + 1), hi
        return lo, hi

    def _block_delta(self, ids: list[int], removed: set[int]) -> Counter[int]:
        """How many live jobs each block gains (+) or loses (-) in this batch."""
        delta: Counter[int] = Counter(i // BLOCK for i in ids)
        added = set(ids)
        delta.subtract(i // BLOCK for i in removed if i in self._live or i in added)
        return delta

    def _emptied(self, delta: Counter[int], hi: int) -> set[int]:
        """Blocks whose marker can go: empty after this batch, and not the block new ids
        are handed out in (unmarking that one would churn: it is looked at again when hi
        moves on)."""
        if not self._complete:
            return set()  # blocks replay did not count may hold jobs
        candidates = {b for b, d in delta.items() if d < 0} | self._unmark | {self._hi // BLOCK}
        return {b for b in candidates if self._per_block[b] + delta[b] <= 0 and b != hi // BLOCK}

    def _execute(self, plan: dict[int, _Writes]) -> None:
        """Send the plan: chunks and meta, heads, deletes; undo heads and chunks on failure."""
        written: dict[int, list[bytes]] = {}
        try:
            for server, writes in plan.items():
                if writes.chunks or writes.meta:
                    written.setdefault(server, []).extend(writes.chunks)
                    refused = self._call(
                        server, "write", Client.set_many, {**writes.chunks, **writes.meta}
                    )
                    if refused:
                        raise StoreUnavailable(
                            f"memcached {self._names[server]} refused to store {refused[0]!r}"
                        )
            for server, writes in plan.items():
                if writes.heads:
                    written.setdefault(server, []).extend(writes.heads)
                    stored = self._call(server, "write", _add_many, writes.heads)
                    taken = [key for key, ok in stored.items() if not ok]
                    if taken:
                        written[server] = [k for k in written[server] if k not in taken]
                        raise StoreError(
                            f"memcached {self._names[server]} already holds {taken[0]!r} "
                            "(another gearstore using the same prefix?); nothing was written"
                        )
            for server, writes in plan.items():
                if writes.deletes:
                    self._call(server, "delete", Client.delete_many, writes.deletes)
        except StoreError:
            # A server may have restarted empty: write the watermark and markers again.
            self._written, self._marked = None, set()
            self._rollback(written)
            raise

    def _rollback(self, written: dict[int, list[bytes]]) -> None:
        """Delete what a failed batch wrote; remember what could not be deleted yet."""
        for server, keys in written.items():
            try:
                self._call(server, "delete", Client.delete_many, keys)
            except StoreError:
                log.warning(
                    "memcached %s: %d keys of a failed batch will be deleted when it answers",
                    self._names[server],
                    len(keys),
                )
                self._pending.setdefault(server, []).extend(keys)

    def _flush_pending(self) -> None:
        for server in list(self._pending):
            self._call(server, "delete", Client.delete_many, self._pending[server])
            del self._pending[server]

    # -- replay's steps ---------------------------------------------------------------

    def _marked_blocks(self, lo: int, hi: int, answering: list[int]) -> list[int]:
        """Blocks overlapping lo..hi that any answering server has a marker for."""
        found: set[int] = set()
        first, last = lo // BLOCK, hi // BLOCK if lo <= hi else -1
        for start in range(first, last + 1, MARKER_BATCH):
            blocks = range(start, min(start + MARKER_BATCH, last + 1))
            keys = [self._marker_key(b) for b in blocks]
            for server in answering:
                got = self._call(server, "read", Client.get_many, keys)
                found.update(b for b, key in zip(blocks, keys, strict=True) if key in got)
        return sorted(found)

    def _load(self, job_id: int, server: int, head: bytes) -> StoredJob:
        """Decode one job from its head, reading its chunks (if any) from its server."""
        nchunks, length, token = decode_head(head)
        buf, start = head, _HEAD.size
        if nchunks:
            keys = self._chunk_keys(job_id, token, nchunks)
            got = self._call(server, "read", Client.get_many, keys)
            lost = [key for key in keys if key not in got]
            if lost:
                raise StoreCorrupt(
                    f"memcached {self._names[server]} lost {lost[0]!r}, part of job {job_id} "
                    "(evicted? run memcached with -M); delete that job's keys to start "
                    "without it"
                )
            buf, start = b"".join([head[_HEAD.size :], *(got[key] for key in keys)]), 0
            self._chunked[job_id] = (token, nchunks)
        job = decode_record(buf, length, start)
        if job.id != job_id:
            raise StoreCorrupt(f"memcached key {self._head_key(job_id)!r} holds job {job.id}")
        return job

    def _call(self, server: int, what: str, method: Callable[..., Any], *args: Any) -> Any:
        """Run one pymemcache call, turning driver errors into StoreUnavailable."""
        name = self._names[server]
        try:
            return method(self._clients[server], *args)
        except _ERRORS as exc:
            text = str(exc) if isinstance(exc, MemcacheServerError) else ""
            if "too large" in text:
                hint = "its item size limit (-I) is smaller than at start-up; restart gearstore"
            elif "out of memory" in text:
                hint = "it is full and must not evict (-M): raise -m or drain the queue"
            else:
                hint = "is it running? gearstore retries the batch"
            raise StoreUnavailable(
                f"memcached {name} failed to {what} ({type(exc).__name__}: {exc}); {hint}"
            ) from exc


def _add_many(client: Client, values: dict[bytes, bytes]) -> dict[bytes, bool]:
    """Pipelined memcached ``add``: one round trip, a stored/not-stored flag per key."""
    result: dict[bytes, bool] = client._store_cmd(b"add", values, 0, False)
    return result
