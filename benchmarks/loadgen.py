"""Gearman load generator for any server (gearstore or the C gearmand) by host and port.

Modes:

- ``bg-submit``: N background submits (SUBMIT_JOB_BG) over C connections, each keeping a
  window of W requests in flight; the rate is N over the time from the first send to
  the last JOB_CREATED.
- ``drain``: worker connections grab and complete everything queued for the function
  (GRAB_JOB, then WORK_COMPLETE + the next GRAB_JOB in one write) until NO_JOB.
- ``fg-roundtrip``: K clients each run SUBMIT_JOB → JOB_CREATED → WORK_COMPLETE in a
  closed loop, served by K workers (GRAB_JOB / PRE_SLEEP / NOOP); reports jobs/s and
  the latency of each round trip.

The load runs in several processes (spawned) so Python on the client side is less of a
bottleneck; each drives its share of the connections from one selector loop. All
processes connect and finish their handshakes first, then start together at a
barrier; times are CLOCK_MONOTONIC, which every process shares. Requests are encoded
once with gearstore's codec; replies are walked by their 12-byte headers rather than
through the full Decoder, because the load generator shares two cores with the server.

With ``--server-pid`` the report adds the server's own CPU time per job (see
procstat.py), the figure to trust on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import selectors
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import procstat

from gearstore.protocol.codec import encode_request
from gearstore.protocol.packets import PacketType as T

_unpack_header = struct.Struct(">4sII").unpack_from
_MAGIC = b"\0RES"
#: seconds without any reply before a phase is declared stuck
STALL_TIMEOUT = 60.0
SETUP_TIMEOUT = 60.0

_GRAB = encode_request(T.GRAB_JOB)
_PRE_SLEEP = encode_request(T.PRE_SLEEP)
_ECHO = encode_request(T.ECHO_REQ, b"sync")


class Conn:
    """One non-blocking connection with an input buffer and an output buffer."""

    __slots__ = ("count", "done", "extra", "inbuf", "out", "sel", "sock", "writing")

    def __init__(self, host: str, port: int, sel: selectors.BaseSelector) -> None:
        self.sock = socket.create_connection((host, port), timeout=SETUP_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inbuf = bytearray()
        self.out = bytearray()
        self.sel = sel
        self.writing = False
        self.done = False
        self.count = 0  # jobs this connection finished
        self.extra: Any = None

    def sync(self, first: bytes = b"") -> None:
        """Send ``first`` plus ECHO_REQ and block until ECHO_RES: the server has
        processed ``first`` (CAN_DO, PRE_SLEEP) before the timed part starts."""
        self.sock.sendall(first + _ECHO)
        while True:
            for ptype, _ in self.packets(self.recv_blocking()):
                if ptype == T.ECHO_RES:
                    self.sock.setblocking(False)
                    self.sel.register(self.sock, selectors.EVENT_READ, self)
                    return

    def recv_blocking(self) -> bytearray:
        data = self.sock.recv(1 << 18)
        if not data:
            raise ConnectionError("server closed the connection")
        self.inbuf += data
        return self.inbuf

    def packets(self, buf: bytearray) -> list[tuple[int, bytes]]:
        """Every complete packet in ``buf`` as (type, payload); consumes them."""
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 12:
            magic, ptype, size = _unpack_header(buf, pos)
            if magic != _MAGIC:
                raise ConnectionError(f"bad magic {magic!r} from server")
            stop = pos + 12 + size
            if stop > end:
                break
            out.append((ptype, bytes(buf[pos + 12 : stop])))
            pos = stop
        del buf[:pos]
        return out

    def send(self, data: bytes) -> None:
        """Queue bytes; written as the socket accepts them."""
        self.out += data

    def flush(self) -> None:
        """Write what the socket takes now; watch for writability if some is left."""
        if self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                sent = 0
            del self.out[:sent]
        want = bool(self.out)
        if want != self.writing:
            self.writing = want
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.sel.modify(self.sock, mask, self)


class Submits:
    """Encodes submit packets. With a ``unique`` prefix every job gets its own key, as
    libgearman clients send a UUID per job (gearmand's SQL stores keep one row per
    (unique, function) and refuse a second empty key); without one the packet is
    encoded once and repeated."""

    __slots__ = ("data", "function", "packet", "prefix", "ptype", "seq")

    def __init__(self, ptype: int, function: bytes, data: bytes, prefix: bytes | None) -> None:
        self.ptype, self.function, self.data, self.prefix = ptype, function, data, prefix
        self.packet = encode_request(ptype, function, b"", data)
        self.seq = 0

    def make(self, n: int) -> bytes:
        """``n`` submit packets."""
        if self.prefix is None:
            return self.packet * n
        seq, self.seq = self.seq, self.seq + n
        p, f, d, prefix = self.ptype, self.function, self.data, self.prefix
        return b"".join(
            encode_request(p, f, b"%s%016x" % (prefix, i), d) for i in range(seq, seq + n)
        )


def _prefix(token: bytes | None, proc: int, conn: int) -> bytes | None:
    # 8 + 1 + 4 + 1 + 4 + 1 + 16 = 35 bytes, about a UUID's 36
    return None if token is None else b"%s-%04x-%04x-" % (token, proc, conn)


def _run_loop(
    sel: selectors.BaseSelector,
    conns: list[Conn],
    on_packet: Callable[[Conn, int, bytes], None],
    finished: Callable[[], bool],
) -> None:
    """Select until ``finished()``; raise if the server goes quiet for too long."""
    for conn in conns:
        conn.flush()
    quiet_since = time.monotonic()
    while not finished():
        events = sel.select(0.05)
        if not events:
            if time.monotonic() - quiet_since > STALL_TIMEOUT:
                raise TimeoutError(f"no reply from the server for {STALL_TIMEOUT:.0f} s")
            continue
        quiet_since = time.monotonic()
        for key, mask in events:
            conn = key.data
            if mask & selectors.EVENT_READ:
                data = conn.sock.recv(1 << 18)
                if not data:
                    raise ConnectionError("server closed the connection")
                conn.inbuf += data
                for ptype, payload in conn.packets(conn.inbuf):
                    on_packet(conn, ptype, payload)
            conn.flush()


# ----------------------------------------------------------------- per-process bodies


def _bg_submit_proc(
    host: str,
    port: int,
    shares: list[int],
    window: int,
    kind: tuple[bytes, bytes, bytes | None, int],
    barrier: Any,
) -> dict[str, Any]:
    function, data, token, proc = kind
    sel = selectors.DefaultSelector()
    conns = []
    for i, share in enumerate(shares):
        conn = Conn(host, port, sel)
        conn.sync()
        # total, sent, errors, packet maker
        conn.extra = [
            share,
            0,
            0,
            Submits(T.SUBMIT_JOB_BG, function, data, _prefix(token, proc, i)),
        ]
        conns.append(conn)
    left = [sum(1 for c in conns if c.extra[0])]
    last = [0.0]
    first_error: list[str] = []

    def on_packet(conn: Conn, ptype: int, payload: bytes) -> None:
        state = conn.extra
        if ptype == T.ERROR:
            state[2] += 1
            first_error[:] = first_error or [payload.replace(b"\0", b": ").decode(errors="replace")]
        elif ptype != T.JOB_CREATED:
            return
        conn.count += 1
        total, sent = state[0], state[1]
        more = min(total - sent, conn.count + window - sent)
        if more > 0:
            conn.send(state[3].make(more))
            state[1] = sent + more
        if conn.count >= total:
            left[0] -= 1
            last[0] = time.monotonic()

    barrier.wait(SETUP_TIMEOUT)
    start = time.monotonic()
    for conn in conns:
        first = min(window, conn.extra[0])
        conn.send(conn.extra[3].make(first))
        conn.extra[1] = first
    _run_loop(sel, conns, on_packet, lambda: left[0] == 0)
    for conn in conns:
        conn.sock.close()
    return {
        "start": start,
        "end": last[0] or time.monotonic(),
        "jobs": sum(c.count - c.extra[2] for c in conns),
        "errors": sum(c.extra[2] for c in conns),
        "first_error": first_error[0] if first_error else None,
    }


def _drain_proc(
    host: str, port: int, nconns: int, function: bytes, grabs: int, barrier: Any
) -> dict[str, Any]:
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(nconns):
        conn = Conn(host, port, sel)
        conn.sync(encode_request(T.CAN_DO, function))
        conn.extra = grabs  # GRAB_JOBs without an answer yet
        conns.append(conn)
    left = [len(conns)]
    last = [0.0]
    errors = [0]

    def on_packet(conn: Conn, ptype: int, payload: bytes) -> None:
        if ptype == T.JOB_ASSIGN:
            handle = payload[: payload.index(b"\0")]
            conn.send(encode_request(T.WORK_COMPLETE, handle, b"") + _GRAB)
            conn.count += 1
        elif ptype == T.NO_JOB or ptype == T.ERROR:
            errors[0] += ptype == T.ERROR
            conn.extra -= 1
            if conn.extra == 0:
                left[0] -= 1
                last[0] = time.monotonic()

    barrier.wait(SETUP_TIMEOUT)
    start = time.monotonic()
    for conn in conns:
        conn.send(_GRAB * grabs)
    _run_loop(sel, conns, on_packet, lambda: left[0] == 0)
    for conn in conns:
        conn.sock.close()
    return {
        "start": start,
        "end": last[0],
        "jobs": sum(c.count for c in conns),
        "errors": errors[0],
    }


def _fg_proc(
    host: str,
    port: int,
    shares: list[int],
    nworkers: int,
    function: bytes,
    payload: bytes,
    unique: tuple[bytes | None, int],
    barrier: Any,
    procs_done: Any,
    nprocs: int,
) -> dict[str, Any]:
    token, proc = unique
    sel = selectors.DefaultSelector()
    workers = []
    for _ in range(nworkers):
        conn = Conn(host, port, sel)
        conn.sync(encode_request(T.CAN_DO, function) + _PRE_SLEEP)
        conn.extra = "worker"
        workers.append(conn)
    clients = []
    for i, share in enumerate(shares):
        conn = Conn(host, port, sel)
        conn.sync()
        # jobs to run, send time of the job in flight, packet maker
        conn.extra = [share, 0.0, Submits(T.SUBMIT_JOB, function, payload, _prefix(token, proc, i))]
        clients.append(conn)
    latencies: list[float] = []
    left = [sum(1 for c in clients if c.extra[0])]
    last = [0.0]
    errors = [0]
    perf = time.perf_counter

    def on_packet(conn: Conn, ptype: int, data: bytes) -> None:
        state = conn.extra
        if state == "worker":
            if ptype == T.JOB_ASSIGN:
                handle, _, job_data = data.split(b"\0", 2)
                conn.send(encode_request(T.WORK_COMPLETE, handle, job_data) + _GRAB)
            elif ptype == T.NOOP:
                conn.send(_GRAB)
            elif ptype == T.NO_JOB:
                conn.send(_PRE_SLEEP)
            return
        if ptype in (T.WORK_COMPLETE, T.WORK_FAIL, T.WORK_EXCEPTION, T.ERROR):
            now = perf()
            errors[0] += ptype != T.WORK_COMPLETE
            latencies.append(now - state[1])
            conn.count += 1
            if conn.count < state[0]:
                state[1] = now
                conn.send(state[2].make(1))
            else:
                left[0] -= 1
                last[0] = time.monotonic()
                if left[0] == 0:
                    with procs_done.get_lock():
                        procs_done.value += 1

    if left[0] == 0:
        with procs_done.get_lock():
            procs_done.value += 1
    barrier.wait(SETUP_TIMEOUT)
    start = time.monotonic()
    for conn in clients:
        if conn.extra[0]:
            conn.extra[1] = perf()
            conn.send(conn.extra[2].make(1))
    # workers keep serving until every process's clients are done
    _run_loop(sel, workers + clients, on_packet, lambda: procs_done.value >= nprocs)
    for conn in workers + clients:
        conn.sock.close()
    return {
        "start": start,
        "end": last[0] or start,
        "jobs": sum(c.count for c in clients) - errors[0],
        "errors": errors[0],
        "latencies": latencies,
    }


def _child(body: Callable[..., dict[str, Any]], args: tuple[Any, ...], results: Any) -> None:
    try:
        results.put(body(*args))
    except BaseException:
        results.put({"error": traceback.format_exc()})
        barrier = next((a for a in args if hasattr(a, "abort")), None)
        if barrier is not None:
            barrier.abort()


# ------------------------------------------------------------------------- driver


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _run(
    body: Callable[..., dict[str, Any]],
    per_proc: list[tuple[Any, ...]],
    server_pid: int | None,
    extra_shared: tuple[Any, ...] = (),
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run ``body`` in one spawned process per args tuple; measure around the barrier."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(per_proc) + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(body, (*args, barrier, *extra_shared), results))
        for args in per_proc
    ]
    for proc in procs:
        proc.start()
    out: list[dict[str, Any]] = []
    cpu: dict[str, float] = {}
    try:
        # a child that failed to connect breaks the barrier; its error is in the queue
        with contextlib.suppress(Exception):
            barrier.wait(SETUP_TIMEOUT)
        if server_pid is not None:
            cpu["before"] = procstat.cpu_seconds(server_pid)
        for _ in procs:
            res = results.get(timeout=STALL_TIMEOUT * 20)
            if "error" in res:
                raise RuntimeError("load process failed:\n" + res["error"])
            out.append(res)
        if server_pid is not None:
            cpu["after"] = procstat.settle(server_pid)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return out, cpu


def _summary(
    mode: str,
    results: list[dict[str, Any]],
    cpu: dict[str, float],
    layout: dict[str, Any],
) -> dict[str, Any]:
    jobs = sum(r["jobs"] for r in results)
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    out: dict[str, Any] = {
        "mode": mode,
        **layout,
        "jobs": jobs,
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r.get("first_error")), None),
        "seconds": round(seconds, 4),
        "jobs_per_s": round(jobs / seconds, 1) if seconds > 0 else None,
    }
    if cpu:
        out["server_cpu_s"] = round(cpu["after"] - cpu["before"], 3)
        out["server_cpu_us_per_job"] = (
            round((cpu["after"] - cpu["before"]) / jobs * 1e6, 2) if jobs else None
        )
    lat = sorted(x for r in results for x in r.get("latencies", ()))
    if lat:
        quantiles = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
        out["latency_ms"] = {
            name: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3, 3)
            for name, q in quantiles.items()
        }
    return out


def bg_submit(
    host: str,
    port: int,
    jobs: int,
    connections: int = 10,
    window: int = 100,
    processes: int = 2,
    payload: int = 100,
    function: bytes = b"bench",
    server_pid: int | None = None,
    unique: bool = True,
) -> dict[str, Any]:
    """N pipelined background submits; returns rate, layout and server CPU per job.

    ``unique``: give each job its own unique key (as libgearman does), else empty.
    """
    processes = max(1, min(processes, connections))
    token = os.urandom(4).hex().encode() if unique else None
    data = b"x" * payload
    per_conn = _split(jobs, connections)
    per_proc = [
        (host, port, per_conn[i::processes], window, (function, data, token, i))
        for i in range(processes)
    ]
    results, cpu = _run(_bg_submit_proc, per_proc, server_pid)
    layout = {"processes": processes, "connections": connections, "window": window}
    return _summary("bg-submit", results, cpu, {**layout, "payload": payload, "unique": unique})


def drain(
    host: str,
    port: int,
    connections: int = 10,
    processes: int = 2,
    grabs: int = 1,
    function: bytes = b"bench",
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Workers grab and complete every queued job of ``function`` until NO_JOB."""
    processes = max(1, min(processes, connections))
    per_proc = [(host, port, n, function, grabs) for n in _split(connections, processes)]
    results, cpu = _run(_drain_proc, per_proc, server_pid)
    layout = {"processes": processes, "connections": connections, "grabs_in_flight": grabs}
    return _summary("drain", results, cpu, layout)


def fg_roundtrip(
    host: str,
    port: int,
    jobs: int,
    clients: int = 10,
    workers: int = 10,
    processes: int = 2,
    payload: int = 100,
    function: bytes = b"bench_fg",
    server_pid: int | None = None,
    unique: bool = True,
) -> dict[str, Any]:
    """Closed-loop foreground round trips; jobs/s and latency percentiles."""
    processes = max(1, min(processes, max(clients, workers)))
    token = os.urandom(4).hex().encode() if unique else None
    per_client = _split(jobs, clients)
    wsplit = _split(workers, processes)
    per_proc = [
        (host, port, per_client[i::processes], wsplit[i], function, b"x" * payload, (token, i))
        for i in range(processes)
    ]
    procs_done = mp.get_context("spawn").Value("i", 0)
    results, cpu = _run(_fg_proc, per_proc, server_pid, (procs_done, processes))
    layout = {"processes": processes, "clients": clients, "workers": workers}
    return _summary("fg-roundtrip", results, cpu, {**layout, "payload": payload})


def main(argv: list[str] | None = None) -> int:
    """Command line: run one mode against one server and print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["bg-submit", "drain", "fg-roundtrip"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4730)
    parser.add_argument("--jobs", type=int, default=100_000, help="bg-submit, fg-roundtrip")
    parser.add_argument("--connections", type=int, default=10, help="submit/worker conns")
    parser.add_argument("--window", type=int, default=100, help="bg submits in flight per conn")
    parser.add_argument("--grabs", type=int, default=1, help="drain: GRAB_JOBs in flight")
    parser.add_argument("--clients", type=int, default=10, help="fg-roundtrip clients")
    parser.add_argument("--workers", type=int, default=10, help="fg-roundtrip workers")
    parser.add_argument("--processes", type=int, default=2, help="load processes")
    parser.add_argument("--payload", type=int, default=100, help="bytes of job data")
    parser.add_argument("--function", default="bench")
    parser.add_argument("--server-pid", type=int, help="report this process's CPU per job")
    parser.add_argument(
        "--no-unique", dest="unique", action="store_false",
        help="send empty unique keys (default: a distinct 35-byte key per job, like libgearman)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    fn = args.function.encode()
    common = {"server_pid": args.server_pid, "processes": args.processes}
    unique = {"unique": args.unique}
    if args.mode == "bg-submit":
        res = bg_submit(
            args.host, args.port, args.jobs, args.connections, args.window,
            payload=args.payload, function=fn, **common, **unique,
        )  # fmt: skip
    elif args.mode == "drain":
        res = drain(args.host, args.port, args.connections, grabs=args.grabs, function=fn, **common)
    else:
        res = fg_roundtrip(
            args.host, args.port, args.jobs, args.clients, args.workers,
            payload=args.payload, function=fn, **common, **unique,
        )  # fmt: skip
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
