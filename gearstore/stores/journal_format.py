"""Byte layout of the journal store's files (see docs/journal-format.md).

Every file starts with a 32-byte header; the rest is a sequence of frames::

    header  magic "\\x89GSJRNL\\n" | version u16 | kind u16 | seq u64 | salt 8s | crc u32
    frame   marker "\\xf5GJF" | length u64 | crc u32 | payload (length bytes)
    payload entries, each starting with a type byte:
            ADD    1 | id u64 | priority u8 | flags u8 | when i64 | 4 x u32 lengths
                   | function | unique | reducer | data
            REMOVE 2 | id u64
            END    3 | count u64        (last entry of a snapshot file only)

All integers are little-endian. One apply() batch is one frame, so a batch is on disk
entirely or not at all. Checksums are zlib.crc32 seeded with the file's random salt,
so a frame copied from another file (or sitting inside a job's data) never validates.
The codec is pure (bytes in, values out); the second half names, lists and checks
files, for the store and for its compaction and salvage.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from gearstore.stores.base import Priority, SchemaTooNew, StoreCorrupt, StoredJob, StoreError

MAGIC = b"\x89GSJRNL\n"
VERSION = 1
KIND_JOURNAL = 1
KIND_SNAPSHOT = 2
HEADER = struct.Struct("<8sHHQ8sI")
FRAME_MARKER = b"\xf5GJF"
FRAME = struct.Struct("<4sQI")
ADD = struct.Struct("<BQBBqIIII")
ID_ENTRY = struct.Struct("<BQ")  # REMOVE and END share this shape
T_ADD, T_REMOVE, T_END = 1, 2, 3
F_WHEN, F_REDUCER = 1, 2

_PRIORITIES = tuple(Priority)

#: what frames are read from: a whole file as bytes, or a read-only mmap of it
Buffer = bytes | mmap.mmap


class RecordError(ValueError):
    """Bytes that are not a valid header, frame or entry; the message says which part."""


class TornHeader(RecordError):
    """A header cut short: the file was created but its header never fully reached disk."""


class FileHeader(NamedTuple):
    """The decoded fixed header of one journal or snapshot file."""

    version: int
    kind: int
    seq: int
    salt: bytes


def encode_header(kind: int, seq: int, salt: bytes) -> bytes:
    """Return the 32-byte header for a new file."""
    body = HEADER.pack(MAGIC, VERSION, kind, seq, salt, 0)[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def decode_header(data: bytes) -> FileHeader:
    """Decode a header, raising TornHeader for a cut-short one and RecordError otherwise.

    A version newer than ours is returned as is; refusing it is the caller's decision.
    """
    if len(data) < HEADER.size:
        if data == MAGIC[: len(data)] or data.startswith(MAGIC):
            raise TornHeader(f"header is only {len(data)} of {HEADER.size} bytes")
        raise RecordError("file does not start with the gearstore journal magic bytes")
    magic, version, kind, seq, salt, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RecordError("file does not start with the gearstore journal magic bytes")
    if zlib.crc32(data[: HEADER.size - 4]) != crc:
        raise RecordError("header checksum mismatch")
    return FileHeader(version, kind, seq, salt)


def frame_crc(salt: bytes, length: int, payload: bytes | memoryview) -> int:
    """Checksum of one frame: crc32 over salt, the length field and the payload."""
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Q", length), zlib.crc32(salt)))


def encode_frame_header(salt: bytes, payload: bytes) -> bytes:
    """Return the 16-byte frame header that precedes ``payload``."""
    return FRAME.pack(FRAME_MARKER, len(payload), frame_crc(salt, len(payload), payload))


def encode_add(job: StoredJob) -> list[bytes]:
    """Encode one ADD entry as its parts: the fixed fields, then the four byte strings.

    Raises StoreError for a job that cannot be represented, before anything is written.
    """
    try:
        if job.priority not in _PRIORITIES:
            raise ValueError(f"priority {job.priority!r} is not HIGH, NORMAL or LOW")
        reducer = b"" if job.reducer is None else job.reducer
        parts = [_as_bytes(job.function), _as_bytes(job.unique), _as_bytes(reducer)]
        parts.append(_as_bytes(job.data))
        flags = (F_WHEN if job.when is not None else 0) | (
            F_REDUCER if job.reducer is not None else 0
        )
        # struct refuses ids, times and lengths that do not fit their fields
        fixed = ADD.pack(T_ADD, job.id, job.priority, flags, job.when or 0, *map(len, parts))
    except (struct.error, TypeError, ValueError) as exc:
        raise StoreError(f"job {job.id!r} cannot be stored: {exc}") from exc
    return [fixed, *parts]


def _as_bytes(value: object) -> bytes:
    """Accept bytes-like fields only: ``bytes(5)`` would silently store five NULs."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"expected bytes, got {type(value).__name__}")


def encode_id_entry(entry_type: int, value: int) -> bytes:
    """Encode a REMOVE (job id) or END (job count) entry."""
    try:
        return ID_ENTRY.pack(entry_type, value)
    except struct.error as exc:
        raise StoreError(f"job id {value!r} cannot be stored: {exc}") from exc


def add_entry_size(job: StoredJob) -> int:
    """Size in bytes of the ADD entry :func:`encode_add` produces for ``job``."""
    reducer = 0 if job.reducer is None else len(job.reducer)
    return ADD.size + len(job.function) + len(job.unique) + reducer + len(job.data)


def check_frame(buf: Buffer, pos: int, salt: bytes) -> tuple[int, int] | str:
    """Validate the frame starting at ``pos``.

    Returns ``(payload_start, payload_end)`` or a short reason why it is not a frame.
    """
    size = len(buf)
    if size - pos < FRAME.size:
        return f"incomplete frame header ({size - pos} bytes)"
    marker, length, crc = FRAME.unpack_from(buf, pos)
    if marker != FRAME_MARKER:
        return "no frame marker"
    start = pos + FRAME.size
    if length > size - start:
        return f"frame claims {length} bytes but only {size - start} remain"
    # a memoryview slice checksums an mmap in place instead of copying the payload
    if frame_crc(salt, length, memoryview(buf)[start : start + length]) != crc:
        return "frame checksum mismatch"
    return start, start + length


def find_next_frame(buf: Buffer, pos: int, salt: bytes) -> int | None:
    """Offset of the first valid frame at or after ``pos``, or None.

    Used after a bad frame to tell a torn tail (nothing valid follows) from damage in
    the middle (acknowledged frames follow). The marker search runs in C; only
    candidates that carry the marker pay for a checksum.
    """
    while (pos := buf.find(FRAME_MARKER, pos)) >= 0:
        if not isinstance(check_frame(buf, pos, salt), str):
            return pos
        pos += 1
    return None


def decode_add(buf: Buffer, pos: int) -> StoredJob:
    """Decode the ADD entry at ``pos`` (bounds-checked by :func:`index_chain`)."""
    _, job_id, prio, flags, when, n_fn, n_uniq, n_red, n_data = ADD.unpack_from(buf, pos)
    a = pos + ADD.size
    b = a + n_fn
    c = b + n_uniq
    d = c + n_red
    return StoredJob(
        job_id,
        buf[a:b],
        buf[b:c],
        _PRIORITIES[prio],
        when if flags & F_WHEN else None,
        buf[d : d + n_data],
        buf[c:d] if flags & F_REDUCER else None,
    )


def encode_batch(add: Sequence[StoredJob], remove: Sequence[int]) -> tuple[bytes, list[int]]:
    """Encode one apply() batch as a frame payload; also return each ADD entry's size.

    The loop inlines :func:`encode_add` for the usual job (bytes fields, a Priority, an
    int or no time): it runs for every job the server persists.
    """
    parts: list[bytes] = []
    sizes: list[int] = []
    pack, fixed_size, priorities = ADD.pack, ADD.size, _PRIORITIES
    for job in add:
        fn, uniq, red, data, when = job.function, job.unique, job.reducer, job.data, job.when
        if (
            type(fn) is bytes
            and type(uniq) is bytes
            and type(data) is bytes
            and (red is None or type(red) is bytes)
            and (when is None or type(when) is int)
            and job.priority in priorities
        ):
            flags = (0 if when is None else F_WHEN) | (0 if red is None else F_REDUCER)
            red_bytes = b"" if red is None else red
            try:
                head = pack(
                    T_ADD, job.id, job.priority, flags, when or 0,
                    len(fn), len(uniq), len(red_bytes), len(data),
                )  # fmt: skip
            except struct.error:
                head = b""  # let encode_add raise the full error
        else:
            head = b""
        if head:
            parts += (head, fn, uniq, red_bytes, data)
            sizes.append(fixed_size + len(fn) + len(uniq) + len(red_bytes) + len(data))
        else:
            entry = encode_add(job)
            parts += entry
            sizes.append(sum(map(len, entry)))
    parts.extend(encode_id_entry(T_REMOVE, job_id) for job_id in remove)
    return b"".join(parts), sizes


# -- files: naming, listing, scanning ----------------------------------------------

NAME_RE = re.compile(r"(journal|snapshot)\.([0-9a-f]{16})(\.tmp)?\Z")
KIND_NAMES = {KIND_JOURNAL: "journal", KIND_SNAPSHOT: "snapshot"}
SALVAGE_HINT = (
    "restore the directory from a backup, or run "
    "`python -m gearstore.stores.journal salvage {dir}` to keep every readable record "
    "(see docs/journal-format.md)"
)

#: a link of the chain: (kind, seq, path), in replay order
Link = tuple[int, int, Path]


def file_name(kind: int, seq: int) -> str:
    """The name of journal or snapshot number ``seq``."""
    return f"{KIND_NAMES[kind]}.{seq:016x}"


@dataclass
class DirectoryState:
    """What :func:`list_directory` found: the files to replay and the ones to remove."""

    chain: list[Link]
    obsolete: list[Path]  # covered by a newer snapshot: a compaction ended before unlink
    temporary: list[Path]  # a compaction's unfinished snapshot


def list_directory(directory: Path, *, strict: bool = True) -> DirectoryState:
    """Sort DIR's files into the replay chain (the newest snapshot, then the journals
    after it), obsolete files and temporary files. Unrelated names are ignored.

    With ``strict`` a gap in the journal numbers raises StoreCorrupt: a missing file
    held acknowledged jobs.
    """
    journals: dict[int, Path] = {}
    snapshots: dict[int, Path] = {}
    temporary: list[Path] = []
    for name in sorted(os.listdir(directory)):
        if m := NAME_RE.match(name):
            if m[3]:
                temporary.append(directory / name)
            else:
                (journals if m[1] == "journal" else snapshots)[int(m[2], 16)] = directory / name
    base = max(snapshots, default=0)
    chain: list[Link] = [(KIND_SNAPSHOT, base, snapshots[base])] if snapshots else []
    obsolete = [p for s, p in snapshots.items() if s != base]
    obsolete += [p for s, p in journals.items() if s <= base]
    expected = base + 1
    for seq in sorted(s for s in journals if s > base):
        if seq != expected and strict:
            after = f"after {chain[-1][2].name}" if chain else "first"
            raise StoreCorrupt(
                f"journal directory {directory} lacks {file_name(KIND_JOURNAL, expected)} "
                f"(expected {after}): it held acknowledged jobs. Put it back, or "
                + SALVAGE_HINT.format(dir=directory)
            )
        chain.append((KIND_JOURNAL, seq, journals[seq]))
        expected = seq + 1
    return DirectoryState(chain, obsolete, temporary)


@dataclass
class FileScan:
    """One file's checked frames, read through a read-only mmap until :meth:`close`."""

    path: Path
    kind: int
    seq: int
    salt: bytes
    buf: Buffer
    size: int
    frames: list[tuple[int, int]] = field(default_factory=list)  # payload (start, end)
    cut: int | None = None  # repair: truncate the file here (torn or corrupt tail)
    reason: str = ""  # why the tail was cut
    skipped: list[tuple[int, int, str]] = field(default_factory=list)  # salvage only

    def close(self) -> None:
        """Unmap the file; ``buf`` must not be used afterwards."""
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        self.buf = b""


def scan_file(path: Path, kind: int, seq: int, *, repair: bool, salvage: bool = False) -> FileScan:
    """Check every frame of one file.

    ``repair`` (last journal only): a bad frame with no valid frame after it is a torn
    tail, recorded in ``cut``; a torn header sets ``cut = 0``. ``salvage``: skip bad
    regions instead of raising. Otherwise any damage raises StoreCorrupt.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf: Buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    scan = FileScan(path, kind, seq, b"", buf, size)
    try:
        _scan_frames(scan, repair, salvage)
    except BaseException:
        scan.close()
        raise
    return scan


def _scan_frames(scan: FileScan, repair: bool, salvage: bool) -> None:
    buf, path, hint = scan.buf, scan.path, SALVAGE_HINT.format(dir=scan.path.parent)
    try:
        header = decode_header(buf[: HEADER.size])
    except TornHeader as exc:
        if repair:  # created, crashed before its header was synced: held no frames yet
            scan.cut, scan.reason = 0, str(exc)
            return
        raise StoreCorrupt(f"{path}: {exc}, but it is not the newest file; {hint}") from exc
    except RecordError as exc:
        if not (salvage and buf[: len(MAGIC)] == MAGIC and len(buf) >= HEADER.size):
            raise StoreCorrupt(
                f"{path} is not a gearstore journal file ({exc}); --db must name a "
                "directory used only by the file store: move the file out, or " + hint
            ) from exc
        header = FileHeader(*HEADER.unpack_from(buf)[1:5])  # salvage: trust the salt
    if header.version > VERSION:
        raise SchemaTooNew(
            f"{path} was written by a newer gearstore (journal format {header.version}, "
            f"this one reads {VERSION}); upgrade gearstore"
        )
    if (header.kind, header.seq) != (scan.kind, scan.seq) and not salvage:
        raise StoreCorrupt(
            f"{path}: its header says {KIND_NAMES.get(header.kind, '?')} {header.seq}, "
            "which does not match its name; was it renamed or copied? " + hint
        )
    scan.salt = salt = header.salt
    pos = HEADER.size
    while pos < scan.size:
        found = check_frame(buf, pos, salt)
        if not isinstance(found, str):
            scan.frames.append(found)
            pos = found[1]
            continue
        following = find_next_frame(buf, pos + 1, salt)
        if salvage:
            scan.skipped.append((pos, scan.size if following is None else following, found))
            if following is None:
                return
            pos = following
        elif repair and following is None:
            scan.cut, scan.reason = pos, found
            return
        else:
            where = (
                f"a valid record follows at byte {following}"
                if following is not None
                else "it is not the newest file"
            )
            raise StoreCorrupt(
                f"{path} is damaged at byte {pos} ({found}) and {where}: cutting it off "
                f"would lose acknowledged jobs, so the store will not open; {hint}"
            )


def index_chain(scans: Sequence[FileScan], *, strict: bool = True) -> dict[int, int]:
    """Replay the chain's entries in order; return job id -> packed location of the
    ADD entry of each live job (see :func:`pack_location`).

    This is the one loop that visits every entry, so it is written for speed: no
    generator, no objects per entry. It also checks each snapshot's END record.
    With ``strict`` false (salvage) a malformed frame is noted in ``scan.skipped``.
    """
    where: dict[int, int] = {}
    unpack_add, unpack_id, add_size = ADD.unpack_from, ID_ENTRY.unpack_from, ADD.size
    for i, scan in enumerate(scans):
        buf, snapshot, tag = scan.buf, scan.kind == KIND_SNAPSHOT, i << _FILE_SHIFT
        adds, ended = 0, False
        for start, end in scan.frames:
            pos = start
            try:
                while pos < end:
                    kind = buf[pos]
                    if kind == T_ADD and not ended and end - pos >= add_size:
                        _, job_id, prio, flags, _, n_fn, n_uniq, n_red, n_data = unpack_add(
                            buf, pos
                        )
                        size = add_size + n_fn + n_uniq + n_red + n_data
                        if pos + size > end or prio > 2 or flags > 3:
                            raise RecordError(f"malformed ADD entry at byte {pos}")
                        where[job_id] = tag | pos << _START_SHIFT | size
                        adds += 1
                        pos += size
                    elif kind == T_REMOVE and not snapshot and end - pos >= 9:
                        where.pop(unpack_id(buf, pos)[1], None)
                        pos += 9
                    elif kind == T_END and snapshot and not ended and end - pos >= 9:
                        if unpack_id(buf, pos)[1] != adds:
                            raise RecordError(f"END entry at byte {pos} counts other jobs")
                        ended = True
                        pos += 9
                    else:
                        raise RecordError(f"unexpected entry (type {kind}) at byte {pos}")
            except RecordError as exc:
                if strict:
                    raise StoreCorrupt(
                        f"{scan.path}: {exc}; " + SALVAGE_HINT.format(dir=scan.path.parent)
                    ) from exc
                scan.skipped.append((start, end, str(exc)))
        if snapshot and not ended and strict:
            raise StoreCorrupt(
                f"{scan.path} is incomplete (no END record); "
                + SALVAGE_HINT.format(dir=scan.path.parent)
            )
    return where


_START_SHIFT = 48
_FILE_SHIFT = 96
_MASK = (1 << 48) - 1


def pack_location(file_index: int, start: int, size: int) -> int:
    """One int for (file, offset, size): ~70 bytes a job in a dict, a tuple costs ~200."""
    return file_index << _FILE_SHIFT | start << _START_SHIFT | size


def unpack_location(location: int) -> tuple[int, int, int]:
    """The (file index, start, size) that :func:`pack_location` packed."""
    return location >> _FILE_SHIFT, (location >> _START_SHIFT) & _MASK, location & _MASK


def entry_size(location: int) -> int:
    """The size part of a packed location."""
    return location & _MASK


def fsync_dir(directory: Path) -> None:
    """Make a create, rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_file(path: Path, kind: int, seq: int) -> tuple[int, bytes]:
    """Create ``path`` with a fresh header, synced along with its directory entry.

    Returns a descriptor opened for appending, and the file's salt.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
    salt = os.urandom(8)
    try:
        os.write(fd, encode_header(kind, seq, salt))
        os.fsync(fd)
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd, salt
