"""Replay benchmark: how long a restart with N queued jobs takes, and what they cost in RSS.

gearstore: queue N background jobs into a fresh SQLite store through real submits,
stop the server (SIGTERM), start it again, and time from spawn until the port accepts
(gearstore replays before it listens). Memory per job is (VmRSS after the replay -
VmRSS of the same server started on an empty store) / N.

gearmand (libsqlite3): filling its store through submits would take minutes (one
commit per job), so the N rows are inserted straight into the table gearmand created,
in the form gearmand writes them (a UUID as unique key, priority NORMAL), then
gearmand is started the same way. Both servers' queue counts are checked with the
``status`` admin command afterwards.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
import uuid
from typing import Any

import loadgen
import procstat
from servers import ServerProc, new_workdir, store_flags

from gearstore.client import admin, parse_status


def _queued(port: int, function: str) -> int:
    status = parse_status(admin("127.0.0.1", port, "status"))
    return status.get(function, (0, 0, 0))[0]


def _wait_all_queued(server: ServerProc, jobs: int, began: float) -> float:
    """Seconds from ``began`` until ``status`` shows every job (gearmand may accept
    connections before its replay is over)."""
    while True:
        try:
            if _queued(server.port, "replay") >= jobs:
                return round(time.monotonic() - began, 3)
        except OSError:
            pass  # gearmand answers nothing while it replays; the client times out
        if time.monotonic() - began > 3600:
            raise TimeoutError("the replayed jobs never all showed up in status")
        time.sleep(0.005)


def _rss_after_start(server: ServerProc) -> int:
    procstat.settle(server.pid, quiet=0.3, timeout=10)
    return procstat.rss_bytes(server.pid)


def replay_gearstore(jobs: int, payload: int = 100) -> dict[str, Any]:
    """Fill a SQLite store with ``jobs`` jobs through gearstore, restart, measure."""
    workdir = new_workdir("replay-gs")
    flags = store_flags("sqlite", str(workdir), "replay")
    out: dict[str, Any] = {"server": "gearstore", "jobs": jobs, "fill": "SUBMIT_JOB_BG"}
    server = ServerProc("gearstore", flags, workdir)
    try:
        server.start()
        out["rss_empty_bytes"] = _rss_after_start(server)
        fill = loadgen.bg_submit(
            "127.0.0.1", server.port, jobs, connections=10, window=100, payload=payload,
            function=b"replay", server_pid=server.pid,
        )  # fmt: skip
        out["fill_jobs_per_s"] = fill["jobs_per_s"]
        out["rss_live_bytes"] = procstat.rss_bytes(server.pid)
        server.stop(timeout=120)
        server = ServerProc("gearstore", flags, workdir)
        began = time.monotonic()
        out["restart_until_accepting_s"] = round(server.start(timeout=3600), 3)
        out["restart_until_all_queued_s"] = _wait_all_queued(server, jobs, began)
        out["rss_replayed_bytes"] = _rss_after_start(server)
        out["queued_after_restart"] = _queued(server.port, "replay")
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}\n{server.log_tail()}"
        return out
    finally:
        server.stop(timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)
    return _per_job(out)


def replay_gearmand(jobs: int, payload: int = 100) -> dict[str, Any]:
    """Write ``jobs`` rows into gearmand's libsqlite3 table, start gearmand, measure."""
    workdir = new_workdir("replay-gm")
    flags = store_flags("sqlite", str(workdir), "replay")
    db = flags[flags.index("--libsqlite3-db") + 1]
    out: dict[str, Any] = {"server": "gearmand", "jobs": jobs, "fill": "direct INSERT"}
    server = ServerProc("gearmand", flags, workdir)
    try:
        server.start()  # creates the table
        out["rss_empty_bytes"] = _rss_after_start(server)
        server.stop()
        began = time.monotonic()
        data = b"x" * payload
        with sqlite3.connect(db) as conn:
            conn.executemany(
                "INSERT INTO gearman_queue (unique_key, function_name, priority, data, "
                "when_to_run) VALUES (?, ?, ?, ?, ?)",
                ((str(uuid.uuid4()), "replay", 1, data, 0) for _ in range(jobs)),
            )
        out["fill_jobs_per_s"] = round(jobs / (time.monotonic() - began), 1)
        server = ServerProc("gearmand", flags, workdir)
        began = time.monotonic()
        out["restart_until_accepting_s"] = round(server.start(timeout=3600), 3)
        out["restart_until_all_queued_s"] = _wait_all_queued(server, jobs, began)
        out["rss_replayed_bytes"] = _rss_after_start(server)
        out["queued_after_restart"] = _queued(server.port, "replay")
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}\n{server.log_tail()}"
        return out
    finally:
        server.stop(timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)
    return _per_job(out)


def _per_job(out: dict[str, Any]) -> dict[str, Any]:
    jobs = out["jobs"]
    out["rss_bytes_per_job"] = round((out["rss_replayed_bytes"] - out["rss_empty_bytes"]) / jobs)
    out["replay_jobs_per_s"] = round(jobs / out["restart_until_all_queued_s"], 1)
    return out
