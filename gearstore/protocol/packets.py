"""The Gearman packet table: every packet type, its argument count and who sends it.

Rule: everything the codec and the connection layer need to know about a packet type
lives in this one table, not in if-chains elsewhere.

Wire format of a binary packet: 4-byte magic (``\\0REQ`` or ``\\0RES``), 4-byte big-endian
type, 4-byte big-endian payload size, then the payload: the arguments joined by NUL.
The last argument may itself contain NUL bytes.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

REQ: Final = b"\0REQ"
RES: Final = b"\0RES"
HEADER_SIZE: Final = 12


class PacketType(enum.IntEnum):
    """Gearman packet type numbers (1-42)."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    # 5 is unused by the protocol
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


class Sender(enum.Flag):
    """Who may send a packet type: a client, a worker, the server."""

    CLIENT = enum.auto()
    WORKER = enum.auto()
    SERVER = enum.auto()


class PacketSpec(NamedTuple):
    """One row of the packet table."""

    type: PacketType
    argc: int
    sender: Sender


_C, _W, _S = Sender.CLIENT, Sender.WORKER, Sender.SERVER
T = PacketType

#: the packet table (type -> argument count, sender)
SPECS: Final[dict[int, PacketSpec]] = {
    spec.type: spec
    for spec in (
        PacketSpec(T.CAN_DO, 1, _W),
        PacketSpec(T.CANT_DO, 1, _W),
        PacketSpec(T.RESET_ABILITIES, 0, _W),
        PacketSpec(T.PRE_SLEEP, 0, _W),
        PacketSpec(T.NOOP, 0, _S),
        PacketSpec(T.SUBMIT_JOB, 3, _C),  # function, unique, data
        PacketSpec(T.JOB_CREATED, 1, _S),  # handle
        PacketSpec(T.GRAB_JOB, 0, _W),
        PacketSpec(T.NO_JOB, 0, _S),
        PacketSpec(T.JOB_ASSIGN, 3, _S),  # handle, function, data
        PacketSpec(T.WORK_STATUS, 3, _W | _S),  # handle, numerator, denominator
        PacketSpec(T.WORK_COMPLETE, 2, _W | _S),  # handle, data
        PacketSpec(T.WORK_FAIL, 1, _W | _S),  # handle
        PacketSpec(T.GET_STATUS, 1, _C),  # handle
        PacketSpec(T.ECHO_REQ, 1, _C | _W),  # data
        PacketSpec(T.ECHO_RES, 1, _S),  # data
        PacketSpec(T.SUBMIT_JOB_BG, 3, _C),
        PacketSpec(T.ERROR, 2, _S),  # code, text
        PacketSpec(T.STATUS_RES, 5, _S),  # handle, known, running, numerator, denominator
        PacketSpec(T.SUBMIT_JOB_HIGH, 3, _C),
        PacketSpec(T.SET_CLIENT_ID, 1, _W),  # id
        PacketSpec(T.CAN_DO_TIMEOUT, 2, _W),  # function, timeout
        PacketSpec(T.ALL_YOURS, 0, _W),
        PacketSpec(T.WORK_EXCEPTION, 2, _W | _S),  # handle, data
        PacketSpec(T.OPTION_REQ, 1, _C | _W),  # option
        PacketSpec(T.OPTION_RES, 1, _S),  # option
        PacketSpec(T.WORK_DATA, 2, _W | _S),  # handle, data
        PacketSpec(T.WORK_WARNING, 2, _W | _S),  # handle, data
        PacketSpec(T.GRAB_JOB_UNIQ, 0, _W),
        PacketSpec(T.JOB_ASSIGN_UNIQ, 4, _S),  # handle, function, unique, data
        PacketSpec(T.SUBMIT_JOB_HIGH_BG, 3, _C),
        PacketSpec(T.SUBMIT_JOB_LOW, 3, _C),
        PacketSpec(T.SUBMIT_JOB_LOW_BG, 3, _C),
        # function, unique, minute, hour, day of month, month, day of week, data
        PacketSpec(T.SUBMIT_JOB_SCHED, 8, _C),
        PacketSpec(T.SUBMIT_JOB_EPOCH, 4, _C),  # function, unique, epoch, data
        PacketSpec(T.SUBMIT_REDUCE_JOB, 5, _C),  # function, unique, reducer, aggregator, data
        PacketSpec(T.SUBMIT_REDUCE_JOB_BACKGROUND, 5, _C),
        PacketSpec(T.GRAB_JOB_ALL, 0, _W),
        PacketSpec(T.JOB_ASSIGN_ALL, 5, _S),  # handle, function, unique, reducer, data
        PacketSpec(T.GET_STATUS_UNIQUE, 1, _C),  # unique
        PacketSpec(T.STATUS_RES_UNIQUE, 6, _S),  # unique, known, running, num, den, clients
    )
}

#: argument count per type number, as a flat tuple for the decoder's hot path (-1: unknown)
ARGC: Final[tuple[int, ...]] = tuple(
    SPECS[n].argc if n in SPECS else -1 for n in range(max(SPECS) + 1)
)


class Packet(NamedTuple):
    """A decoded binary packet. ``magic`` is REQ or RES; ``type`` is the raw number
    (compare with :class:`PacketType` members, which are ints)."""

    magic: bytes
    type: int
    args: tuple[bytes, ...]


class AdminLine(NamedTuple):
    """A text admin command line (without its line ending)."""

    text: bytes


class ProtocolViolation(NamedTuple):
    """The peer sent something the codec cannot accept.

    ``code`` and ``message`` are what goes into the ERROR packet. ``fatal`` means the
    byte stream cannot be resynchronised and the connection must be closed after the
    error is sent.
    """

    code: bytes
    message: bytes
    fatal: bool


Event = Packet | AdminLine | ProtocolViolation
