"""Flat-file journal store: ``gearstore -q file --db DIR``.

Data layout: DIR holds ``LOCK`` (flock'ed by the server that has the store open), at
most one ``snapshot.<seq>`` (every job that was live when journal <seq> was frozen,
written by compaction) and the journals ``journal.<seq>`` after it, numbered
consecutively; the highest one is appended to, one frame per apply() batch. Byte
layout: :mod:`gearstore.stores.journal_format` and docs/journal-format.md.

Replay: read the snapshot, then each journal in order, applying each batch as a unit;
the survivors are yielded sorted by id. On open a torn tail of the last journal is cut
off; damage anywhere else raises StoreCorrupt rather than dropping acknowledged jobs.
Memory: the live index maps job id -> size of its ADD entry, nothing more.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from gearstore.stores import journal_format as fmt
from gearstore.stores.base import (
    QueueStore,
    StoreConfig,
    StoredJob,
    StoreError,
    StoreUnavailable,
)
from gearstore.stores.journal_format import (
    KIND_JOURNAL,
    KIND_SNAPSHOT,
    FileScan,
    Link,
    create_file,
    file_name,
    fsync_dir,
    index_chain,
    list_directory,
    scan_file,
)
from gearstore.stores.pidlock import lock_exclusively

log = logging.getLogger(__name__)

LOCK_NAME = "LOCK"
# fdatasync is enough for appends: it still flushes the file size, which the data needs
_datasync = getattr(os, "fdatasync", os.fsync)


class JournalStore(QueueStore):
    """Append-only journal files in one directory, compacted in a background thread.

    ``compact_min_bytes``: compaction starts when the files hold more than this many
    bytes and more of them are dead (removed jobs, frame overhead) than live.
    """

    compact_min_bytes: int = 16 * 2**20

    def __init__(self, config: StoreConfig, *, compact_min_bytes: int | None = None) -> None:
        if not config.db:
            raise StoreError("the file store needs a directory: pass --db DIR")
        self.directory = Path(config.db)
        self.description = f"file {self.directory}"
        if compact_min_bytes is not None:
            self.compact_min_bytes = compact_min_bytes
        self._lock_fd: int | None = None
        self._fd: int | None = None  # the active journal, opened O_APPEND
        self._active = Path()
        self._active_seq = 0
        self._active_size = 0
        self._salt = b""
        self._frozen: list[Link] = []  # files before the active journal, replay order
        self._frozen_bytes = 0
        self._live: dict[int, int] = {}  # job id -> size of its ADD entry
        self._live_bytes = 0
        # open()'s mapped files and index, kept for replay() until the first apply()
        self._pending: tuple[list[FileScan], dict[int, int]] | None = None
        self._compaction: Compaction | None = None
        self._compact_floor = 0  # after a failed compaction, wait for this many bytes
        self._broken: str | None = None
        #: tests set this Event to hold a compaction just before its rename
        self._compaction_pause: threading.Event | None = None

    # -- open / close ------------------------------------------------------------

    def open(self) -> None:
        """Create DIR if needed, lock it, repair a torn tail, and index the live jobs."""
        if self._lock_fd is not None:
            raise StoreError(f"journal {self.directory} is already open")
        started = time.monotonic()
        self._broken = None
        self._make_directory()
        self._lock()
        try:
            self._load()
        except OSError as exc:
            self._unlock()
            raise StoreUnavailable(
                f"cannot read journal directory {self.directory}: {exc}"
            ) from exc
        except BaseException:
            self._unlock()
            raise
        log.info(
            "journal %s opened: %d live jobs, %d files, %.1f MiB, in %.2f s",
            self.directory,
            len(self._live),
            len(self._frozen) + 1,
            (self._frozen_bytes + self._active_size) / 2**20,
            time.monotonic() - started,
        )

    def _make_directory(self) -> None:
        missing = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for created in reversed(missing):  # a new directory is durable once its parent is
                fsync_dir(created.parent)
        except FileExistsError as exc:
            raise StoreError(
                f"--db {self.directory} is a file, not a directory; the file store keeps "
                "its journal files in a directory of their own"
            ) from exc
        except OSError as exc:
            raise StoreError(
                f"cannot create journal directory {self.directory}: {exc.strerror}; create "
                "it and give the gearstore user write access, or choose another --db"
            ) from exc

    def _lock(self) -> None:
        self._lock_fd = lock_exclusively(
            self.directory / LOCK_NAME,
            lambda reason: (
                f"journal directory {self.directory} is not writable ({reason}); give "
                "the gearstore user write access to it or choose another --db"
            ),
            lambda pid: (
                f"journal directory {self.directory} is in use by another gearstore process "
                f"(pid {pid}); stop that server first, or give this one another --db"
            ),
        )

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _load(self) -> None:
        state = list_directory(self.directory)
        for tmp in state.temporary:
            log.warning(
                "journal %s: removing %s, left by an interrupted compaction",
                self.directory,
                tmp.name,
            )
            tmp.unlink(missing_ok=True)
        if not state.chain or state.chain[-1][0] != KIND_JOURNAL:
            seq = state.chain[-1][1] + 1 if state.chain else 1
            path = self.directory / file_name(KIND_JOURNAL, seq)
            os.close(create_file(path, KIND_JOURNAL, seq)[0])
            state.chain.append((KIND_JOURNAL, seq, path))
        last = len(state.chain) - 1
        scans = [
            scan_file(path, kind, seq, repair=i == last)
            for i, (kind, seq, path) in enumerate(state.chain)
        ]
        try:
            where = index_chain(scans)
            # the mapping stays valid: a cut only removes bytes no frame refers to
            _repair_tail(scans[last])
            if state.obsolete:
                for path in state.obsolete:
                    path.unlink(missing_ok=True)
                fsync_dir(self.directory)
                log.info(
                    "journal %s: removed %d files already covered by %s",
                    self.directory,
                    len(state.obsolete),
                    state.chain[0][2].name,
                )
            self._fd = os.open(state.chain[last][2], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except BaseException:
            _close_all(scans)
            raise
        self._active, self._active_seq = state.chain[last][2], state.chain[last][1]
        self._salt, self._active_size = scans[last].salt, scans[last].size
        self._frozen = state.chain[:last]
        self._frozen_bytes = sum(scan.size for scan in scans[:last])
        self._live = {job_id: fmt.entry_size(loc) for job_id, loc in where.items()}
        self._live_bytes = sum(self._live.values())
        self._pending = scans, where

    def close(self) -> None:
        """Stop a running compaction (its temp file is removed), release the lock."""
        if self._compaction is not None:
            self._compaction.abort.set()
            if self._compaction_pause is not None:
                self._compaction_pause.set()
            self._finish_compaction(wait=True)
        self._drop_pending()
        self._unlock()

    # -- replay / apply ----------------------------------------------------------

    def replay(self) -> Iterator[StoredJob]:
        """Yield every live job once, in id order, decoding each only when it is due.

        Right after open() this reads the files open() indexed; later it reads them anew.
        """
        self._check_open()
        scans, where = self._pending if self._pending is not None else self._reindex()
        self._pending = None
        try:
            for job_id in sorted(where):
                file_index, start, _size = fmt.unpack_location(where[job_id])
                yield fmt.decode_add(scans[file_index].buf, start)
        finally:
            _close_all(scans)

    def _reindex(self) -> tuple[list[FileScan], dict[int, int]]:
        self._finish_compaction(wait=True)  # it deletes files we are about to read
        chain = [*self._frozen, (KIND_JOURNAL, self._active_seq, self._active)]
        scans = [scan_file(path, kind, seq, repair=False) for kind, seq, path in chain]
        try:
            return scans, index_chain(scans)
        except BaseException:
            _close_all(scans)
            raise

    def _drop_pending(self) -> None:
        if self._pending is not None:
            _close_all(self._pending[0])
            self._pending = None

    def apply(self, add: Sequence[StoredJob], remove: Sequence[int]) -> None:
        """Append the batch as one frame and fdatasync it; adds apply before removes.

        Raises StoreError, with nothing written, if an added id is already stored or a
        job cannot be encoded; StoreUnavailable if the disk write or sync failed.
        """
        self._check_open()
        if self._broken is not None:
            raise StoreUnavailable(self._broken)
        self._finish_compaction(wait=False)
        adding = set()
        for job in add:
            if job.id in self._live or job.id in adding:
                raise StoreError(
                    f"job id {job.id} is already stored in {self.directory}; batch not written"
                )
            adding.add(job.id)
        # removals of unknown ids are not errors and need not be written
        removing = list(dict.fromkeys(i for i in remove if i in self._live or i in adding))
        if not add and not removing:
            return
        payload, sizes = fmt.encode_batch(add, removing)
        self._drop_pending()  # open()'s index is stale from now on
        self._append(fmt.encode_frame_header(self._salt, payload), payload)
        for job, size in zip(add, sizes, strict=True):
            self._live[job.id] = size
            self._live_bytes += size
        for job_id in removing:
            self._live_bytes -= self._live.pop(job_id)
        self._maybe_compact()

    def _append(self, header: bytes, payload: bytes) -> None:
        assert self._fd is not None
        before = self._active_size
        try:
            written = os.writev(self._fd, [header, payload])
            if written < len(header) + len(payload):  # rare: a short write, finish it
                rest = memoryview(header + payload)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
            _datasync(self._fd)
        except OSError as exc:
            self._undo_append(before, exc)
            raise StoreUnavailable(
                f"could not write to journal {self._active}: {exc.strerror}; the batch was "
                "not stored (free disk space or fix the disk, then retry)"
            ) from exc
        self._active_size = before + len(header) + len(payload)

    def _undo_append(self, before: int, exc: OSError) -> None:
        """Cut a failed batch off again, so the next good one does not follow garbage."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, before)
            _datasync(self._fd)
        except OSError as again:
            self._broken = (
                f"journal {self._active} could not be cleaned up after a failed write "
                f"({exc.strerror}, then {again.strerror}); restart gearstore, which cuts "
                "the unfinished batch off when it opens the journal"
            )
            log.error("%s", self._broken)

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise StoreError(f"journal {self.directory} is not open")

    # -- compaction --------------------------------------------------------------

    def compact(self, *, wait: bool = True) -> None:
        """Start a compaction now, whatever the thresholds say (for tests and tools).

        With ``wait`` the call returns once the snapshot replaced the old files.
        """
        self._check_open()
        if self._compaction is None:
            self._start_compaction()
        if wait:
            self._finish_compaction(wait=True)

    def _maybe_compact(self) -> None:
        total = self._frozen_bytes + self._active_size
        if (
            self._compaction is None
            and total >= max(self.compact_min_bytes, self._compact_floor)
            and total - self._live_bytes > self._live_bytes
        ):
            self._start_compaction()

    def _start_compaction(self) -> None:
        """Freeze the active journal, continue in a new one, compact the frozen files.

        Only this switch (create and sync a file and the directory) delays the caller;
        the snapshot is written by another thread while apply() keeps appending.
        """
        seq = self._active_seq + 1
        path = self.directory / file_name(KIND_JOURNAL, seq)
        try:
            fd, salt = create_file(path, KIND_JOURNAL, seq)
        except OSError as exc:
            log.error(
                "journal %s: cannot start a new journal file for compaction: %s",
                self.directory,
                exc,
            )
            path.unlink(missing_ok=True)
            self._compact_floor = self._frozen_bytes + self._active_size + self.compact_min_bytes
            return
        assert self._fd is not None
        os.close(self._fd)
        self._frozen.append((KIND_JOURNAL, self._active_seq, self._active))
        self._frozen_bytes += self._active_size
        self._fd, self._active, self._active_seq = fd, path, seq
        self._active_size = fmt.HEADER.size
        self._salt = salt
        self._compaction = Compaction(self.directory, list(self._frozen), self._compaction_pause)
        self._compaction.thread.start()

    def _finish_compaction(self, *, wait: bool) -> None:
        """Adopt the result of a compaction that has ended (or wait for it to end)."""
        job = self._compaction
        if job is None or (not wait and job.thread.is_alive()):
            return
        job.thread.join()
        self._compaction = None
        if job.snapshot is not None and job.error is not None:
            log.warning(
                "journal %s: compacted, but removing the old files failed: %s",
                self.directory,
                job.error,
            )
        if job.snapshot is None:
            if not job.abort.is_set():
                log.error(
                    "journal %s: compaction failed, keeping the old files: %s",
                    self.directory,
                    job.error,
                )
            total = self._frozen_bytes + self._active_size
            self._compact_floor = total + self.compact_min_bytes
            return
        self._frozen, self._frozen_bytes = [job.snapshot], job.snapshot_size
        self._compact_floor = 0
        log.info(
            "journal %s compacted: %d live jobs, %.1f MiB -> %.1f MiB in %.2f s",
            self.directory,
            job.jobs,
            job.input_bytes / 2**20,
            job.snapshot_size / 2**20,
            job.seconds,
        )


def _close_all(scans: Sequence[FileScan]) -> None:
    for scan in scans:
        scan.close()


def _repair_tail(scan: FileScan) -> None:
    """Cut a torn or corrupt tail off the last journal (or rewrite a torn header)."""
    if scan.cut is None:
        return
    fd = os.open(scan.path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, scan.cut)
        if scan.cut == 0:
            scan.salt = os.urandom(8)
            os.write(fd, fmt.encode_header(KIND_JOURNAL, scan.seq, scan.salt))
        os.fsync(fd)
    finally:
        os.close(fd)
    if scan.cut == 0:
        log.warning(
            "journal %s: rewrote its header, which a crash cut short (%s) while the file "
            "was being created, before it could hold any job",
            scan.path,
            scan.reason,
        )
    else:
        log.warning(
            "journal %s: dropped %d bytes at its end (from byte %d: %s); this is the batch "
            "being written when the server stopped, which was never acknowledged, unless "
            "the disk damaged it",
            scan.path,
            scan.size - scan.cut,
            scan.cut,
            scan.reason,
        )
    scan.size = max(scan.cut, fmt.HEADER.size)


class Compaction:
    """One background compaction: the frozen files -> ``snapshot.<last frozen seq>``.

    The thread reads only frozen files, which nothing writes any more, and hands its
    result back through attributes that the store reads after ``thread.join()``.
    """

    def __init__(self, directory: Path, frozen: list[Link], pause: threading.Event | None) -> None:
        self.directory, self.frozen, self.pause = directory, frozen, pause
        self.abort = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gearstore-compact", daemon=True)
        self.error: BaseException | None = None
        self.snapshot: Link | None = None
        self.snapshot_size = self.jobs = self.input_bytes = 0
        self.seconds = 0.0

    def _run(self) -> None:
        started = time.monotonic()
        scans: list[FileScan] = []
        try:
            scans = [scan_file(p, kind, seq, repair=False) for kind, seq, p in self.frozen]
            self.input_bytes = sum(scan.size for scan in scans)
            seq = self.frozen[-1][1]
            self.snapshot_size, self.jobs = write_snapshot(
                self.directory, scans, seq, abort=self.abort, pause=self.pause
            )
            # renamed: from here on the snapshot counts, whatever happens to the old files
            self.snapshot = (KIND_SNAPSHOT, seq, self.directory / file_name(KIND_SNAPSHOT, seq))
            for scan in scans:
                scan.close()
            for _kind, _seq, path in self.frozen:
                path.unlink(missing_ok=True)  # if this fails, the next open() retries
            fsync_dir(self.directory)
        except BaseException as exc:  # reported by the store's thread, never lost
            self.error = exc
        finally:
            for scan in scans:
                scan.close()
            self.seconds = time.monotonic() - started


class _Aborted(Exception):
    """The store is closing; the compaction gives up and removes its temp file."""


SNAPSHOT_FRAME_BYTES = 1 << 20
# Syncing as we go keeps the final fsync from flushing the whole snapshot at once,
# which on ext4 also stalls the writer's own fdatasync calls for as long.
SNAPSHOT_SYNC_BYTES = 16 << 20


def write_snapshot(
    directory: Path,
    scans: Sequence[FileScan],
    seq: int,
    *,
    abort: threading.Event | None = None,
    pause: threading.Event | None = None,
    strict: bool = True,
) -> tuple[int, int]:
    """Write the live jobs of ``scans`` to ``snapshot.<seq>`` via a synced temp file
    and an atomic rename; return (file size, job count). ADD entries are copied as
    raw bytes, never decoded."""
    final = directory / file_name(KIND_SNAPSHOT, seq)
    tmp = final.with_name(final.name + ".tmp")
    where = index_chain(scans, strict=strict)
    out = _SnapshotWriter(tmp, seq)
    try:
        parts: list[bytes] = []
        size = 0
        for job_id in sorted(where):
            file_index, start, length = fmt.unpack_location(where[job_id])
            parts.append(scans[file_index].buf[start : start + length])
            size += length
            if size >= SNAPSHOT_FRAME_BYTES:
                out.write_frame(parts)
                parts, size = [], 0
                if abort is not None and abort.is_set():
                    raise _Aborted
        parts.append(fmt.encode_id_entry(fmt.T_END, len(where)))
        out.write_frame(parts)
        out.finish()
        if pause is not None:
            pause.wait()
        if abort is not None and abort.is_set():
            raise _Aborted
        os.replace(tmp, final)
        fsync_dir(directory)
    except BaseException:
        out.close()
        tmp.unlink(missing_ok=True)
        raise
    return out.size, len(where)


class _SnapshotWriter:
    """Appends frames to a new snapshot file, syncing every SNAPSHOT_SYNC_BYTES."""

    def __init__(self, path: Path, seq: int) -> None:
        self.salt = os.urandom(8)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self.fd: int | None = os.open(path, flags, 0o644)
        self.size = self.unsynced = 0
        self._write(fmt.encode_header(KIND_SNAPSHOT, seq, self.salt))

    def write_frame(self, parts: list[bytes]) -> None:
        payload = b"".join(parts)
        self._write(fmt.encode_frame_header(self.salt, payload) + payload)
        if self.unsynced >= SNAPSHOT_SYNC_BYTES:
            assert self.fd is not None
            _datasync(self.fd)
            self.unsynced = 0

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)
        self.unsynced += len(data)

    def finish(self) -> None:
        assert self.fd is not None
        os.fsync(self.fd)
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def salvage(directory: str | Path) -> str:
    """Rebuild a damaged journal directory from every record that still checks out.

    The old files are first hard-linked into ``DIR/damaged-<time>/`` for a post-mortem;
    then a snapshot numbered after all of them makes them obsolete in one atomic
    rename. Returns a summary for the operator. Jobs in damaged records are lost; jobs
    that damaged records removed will run again.
    """
    store = JournalStore(StoreConfig(kind="file", db=str(directory)))
    store._make_directory()
    store._lock()
    scans: list[FileScan] = []
    try:
        state = list_directory(store.directory, strict=False)
        old = [p for _k, _s, p in state.chain] + state.obsolete + state.temporary
        keep = store.directory / time.strftime("damaged-%Y%m%d-%H%M%S")
        keep.mkdir()
        for path in old:
            os.link(path, keep / path.name)
        unreadable: list[str] = []
        for kind, seq, path in state.chain:
            try:
                scans.append(scan_file(path, kind, seq, repair=False, salvage=True))
            except StoreError as exc:
                unreadable.append(f"{path.name}: {exc}")
        seq = max((s for _k, s, _p in state.chain), default=0) + 1
        size, jobs = write_snapshot(store.directory, scans, seq, strict=False)
        _close_all(scans)
        for path in old:
            path.unlink(missing_ok=True)
        fsync_dir(store.directory)
    except OSError as exc:
        raise StoreUnavailable(f"salvage of {directory} failed: {exc}") from exc
    finally:
        _close_all(scans)
        store._unlock()
    lines = [f"salvaged {jobs} jobs into {file_name(KIND_SNAPSHOT, seq)} ({size} bytes)"]
    # the snapshot pass records bad entries too, so list the damage only now
    lines += [
        f"  skipped {s.path.name} bytes {a}-{b}: {why}" for s in scans for a, b, why in s.skipped
    ]
    lines += [f"  skipped {item}" for item in unreadable]
    lines.append(f"  the old files are kept in {keep}; delete it when done")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gearstore.stores.journal salvage DIR`` (with the server stopped)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "salvage":
        print("usage: python -m gearstore.stores.journal salvage DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        print(salvage(args[1]))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
