"""The sans-IO codec: round trips, any chunking, hostile input."""

from __future__ import annotations

import ast
import pathlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gearstore.protocol import (
    REQ,
    RES,
    SPECS,
    AdminLine,
    Decoder,
    Packet,
    PacketType,
    ProtocolViolation,
    encode,
)

# argument lists valid for a packet type: NUL only in the last argument
packet_types = st.sampled_from(sorted(SPECS))


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    ptype = draw(packet_types)
    argc = SPECS[ptype].argc
    head = [
        draw(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b""))) for _ in range(argc - 1)
    ]
    args = [*head, draw(st.binary(max_size=300))] if argc else []
    return Packet(REQ, ptype, tuple(args))


def test_table_covers_every_type_1_to_42() -> None:
    assert sorted(SPECS) == [n for n in range(1, 43) if n != 5]
    assert {spec.type.value for spec in SPECS.values()} == set(SPECS)


def test_known_argument_counts() -> None:
    assert SPECS[PacketType.SUBMIT_JOB].argc == 3
    assert SPECS[PacketType.JOB_ASSIGN_ALL].argc == 5
    assert SPECS[PacketType.STATUS_RES_UNIQUE].argc == 6
    assert SPECS[PacketType.SUBMIT_JOB_SCHED].argc == 8
    assert SPECS[PacketType.NOOP].argc == 0


@given(st.lists(packets(), max_size=20), st.data())
@settings(max_examples=200)
def test_round_trip_under_any_chunking(items: list[Packet], data: st.DataObject) -> None:
    wire = b"".join(encode(p.magic, p.type, *p.args) for p in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = Decoder()
    events = []
    last = 0
    for cut in [*cuts, len(wire)]:
        events += decoder.feed(wire[last:cut])
        last = cut
    assert events == items
    assert decoder.buffered == 0


def test_last_argument_keeps_nul_bytes() -> None:
    wire = encode(REQ, PacketType.SUBMIT_JOB, b"f", b"u", b"a\0b\0c")
    assert Decoder().feed(wire) == [Packet(REQ, 7, (b"f", b"u", b"a\0b\0c"))]


def test_admin_lines_interleave_with_packets() -> None:
    wire = b"status\r\n" + encode(REQ, PacketType.ECHO_REQ, b"x") + b"workers\n"
    assert Decoder().feed(wire) == [
        AdminLine(b"status"),
        Packet(REQ, 16, (b"x",)),
        AdminLine(b"workers"),
    ]


def test_admin_line_split_across_reads() -> None:
    decoder = Decoder()
    assert decoder.feed(b"sta") == []
    assert decoder.feed(b"tus\n") == [AdminLine(b"status")]


def test_bad_magic_is_fatal_and_stops_decoding() -> None:
    decoder = Decoder()
    events = decoder.feed(b"\0REX" + struct.pack(">II", 16, 1) + b"x")
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation)
    assert events[0].code == b"INVALID_MAGIC" and events[0].fatal
    assert decoder.feed(encode(REQ, 16, b"x")) == []


def test_bad_magic_detected_before_full_header() -> None:
    events = Decoder().feed(b"\0XYZ")
    assert [e.code for e in events if isinstance(e, ProtocolViolation)] == [b"INVALID_MAGIC"]


def test_response_magic_from_a_client_is_skipped_not_fatal() -> None:
    decoder = Decoder(expect=REQ)
    events = decoder.feed(encode(RES, 16, b"x") + encode(REQ, 16, b"y"))
    assert events[0] == ProtocolViolation(b"INVALID_MAGIC", b"Request magic expected", False)
    assert events[1] == Packet(REQ, 16, (b"y",))


@pytest.mark.parametrize("ptype", [0, 5, 43, 99, 2**31])
def test_unknown_type_is_reported_and_skipped(ptype: int) -> None:
    wire = b"\0REQ" + struct.pack(">II", ptype, 3) + b"abc" + encode(REQ, 16, b"y")
    events = Decoder().feed(wire)
    assert isinstance(events[0], ProtocolViolation) and events[0].code == b"INVALID_COMMAND"
    assert not events[0].fatal
    assert events[1] == Packet(REQ, 16, (b"y",))


def test_too_few_arguments() -> None:
    events = Decoder().feed(encode(REQ, PacketType.SUBMIT_JOB, b"f", b"u"))
    assert isinstance(events[0], ProtocolViolation)
    assert events[0].code == b"INVALID_ARGUMENTS" and not events[0].fatal


def test_oversized_packet_is_refused_from_the_header() -> None:
    decoder = Decoder(max_packet=1024)
    events = decoder.feed(b"\0REQ" + struct.pack(">II", 7, 1025))
    assert isinstance(events[0], ProtocolViolation)
    assert events[0].code == b"ARGUMENT_TOO_LARGE" and events[0].fatal
    assert decoder.buffered == 0


def test_endless_admin_line_is_refused() -> None:
    decoder = Decoder()
    events = decoder.feed(b"x" * (70 * 1024))
    assert isinstance(events[0], ProtocolViolation) and events[0].fatal


@given(st.binary(max_size=2000))
@settings(max_examples=500)
def test_garbage_never_raises(data: bytes) -> None:
    decoder = Decoder(max_packet=4096)
    for i in range(0, len(data), 7):
        for event in decoder.feed(data[i : i + 7]):
            assert isinstance(event, Packet | AdminLine | ProtocolViolation)


def test_protocol_package_does_no_io() -> None:
    root = pathlib.Path(__file__).parents[2] / "gearstore" / "protocol"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"asyncio", "socket", "selectors"}, path
