"""gearstore and the C gearmand side by side, in one run, under the same load.

For each store (builtin, sqlite, file, postgres, mysql, memcached) and each repetition,
both servers are started fresh (new SQLite file, table, journal directory or key
prefix) with the same gearmand-spelled flags, and the same phases run against each,
one server at a time, alternating which goes first:

- ``bg-submit c=C``: pipelined SUBMIT_JOB_BG over C connections (window 100 each);
- ``drain``: worker connections GRAB_JOB / WORK_COMPLETE until the queue is empty;
- ``fg-roundtrip`` (builtin only): closed-loop foreground jobs with latency.

Each phase reports jobs/s (wall clock, noisy on a shared machine) and the server's own
CPU µs per job (utime+stime from /proc, the primary figure). The medians over the
repetitions go to stdout as a table and, with every raw run, to
benchmarks/results/compare-<time>.json. The ``replay`` scenario times a restart with N
queued jobs (see replay.py).

Usage: .venv/bin/python benchmarks/compare.py [--stores builtin,sqlite,...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen
import procstat
import replay
import report
from servers import (
    Memcached,
    ServerProc,
    environment_note,
    gearmand_supports,
    new_workdir,
    start_database,
    store_flags,
)

RESULTS = Path(__file__).resolve().parent / "results"

#: scenario -> (queue type, directory for file-based stores; None: the system temp dir)
STORES: dict[str, tuple[str, str | None]] = {
    "builtin": ("builtin", None),
    "sqlite": ("sqlite", None),
    "sqlite-tmpfs": ("sqlite", "/dev/shm"),
    "file": ("file", None),
    "postgres": ("postgres", None),
    "mysql": ("mysql", None),
    "memcached": ("memcached", None),
}
ALL_SCENARIOS = [*STORES, "replay"]

#: most background jobs per bg-submit phase, per server. Durable stores first run a
#: short probe and then use fewer jobs when fewer are enough for --target-seconds
#: (gearmand's stores commit once per job: ~50/s for SQLite on this disk).
JOBS: dict[str, dict[str, int]] = {
    "builtin": {"gearstore": 30_000, "gearmand": 30_000},
    "sqlite": {"gearstore": 50_000, "gearmand": 50_000},
    "sqlite-tmpfs": {"gearstore": 50_000, "gearmand": 50_000},
    "file": {"gearstore": 50_000},
    "postgres": {"gearstore": 50_000, "gearmand": 50_000},
    "mysql": {"gearstore": 50_000, "gearmand": 50_000},
    "memcached": {"gearstore": 50_000, "gearmand": 50_000},
}


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_phases(
    server: ServerProc, scenario: str, jobs: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every phase of one scenario against one running server."""
    host, port, pid = "127.0.0.1", server.port, server.pid
    phases = []
    sweep = args.connections if scenario == "builtin" else [args.durable_connections]
    queued = 0
    if scenario != "builtin" and args.target_seconds:
        probe = loadgen.bg_submit(
            host, port, args.probe_jobs, connections=sweep[0], window=args.window,
            payload=args.payload, processes=args.processes, unique=args.unique,
        )  # fmt: skip
        queued += probe["jobs"] - probe["errors"]
        wanted = int((probe["jobs_per_s"] or 0) * args.target_seconds)
        jobs = max(args.probe_jobs, min(jobs, wanted))
    for conns in sweep:
        res = loadgen.bg_submit(
            host, port, jobs, connections=conns, window=args.window, payload=args.payload,
            processes=args.processes, server_pid=pid, unique=args.unique,
        )  # fmt: skip
        phases.append({"phase": f"bg-submit c={conns}", **res})
        queued += res["jobs"] - res["errors"]
    res = loadgen.drain(
        host, port, connections=args.drain_connections, processes=args.processes,
        grabs=args.grabs, server_pid=pid,
    )  # fmt: skip
    if res["jobs"] != queued:
        res["note"] = f"drained {res['jobs']} of {queued} queued"
    phases.append({"phase": "drain", **res})
    if scenario == "builtin" and args.fg_jobs:
        res = loadgen.fg_roundtrip(
            host, port, args.fg_jobs, clients=args.fg_clients, workers=args.fg_workers,
            processes=args.processes, payload=args.payload, server_pid=pid,
            unique=args.unique,
        )  # fmt: skip
        phases.append({"phase": "fg-roundtrip", **res})
    return phases


def run_one(
    scenario: str, kind: str, rep: int, location: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Start one fresh server, run the phases, stop it."""
    run_id = f"gsb_{scenario}_{kind}_{rep}_{os.urandom(3).hex()}"
    workdir = new_workdir(f"{scenario}-{kind}")
    store, directory = STORES[scenario]
    if store in ("sqlite", "file"):
        location = directory or args.store_dir or str(workdir)
    flags = store_flags(store, location, run_id)
    jobs = max(1, int(JOBS[scenario][kind] * args.scale))
    out: dict[str, Any] = {"scenario": scenario, "server": kind, "rep": rep, "flags": flags}
    server = ServerProc(kind, flags, workdir)
    try:
        out["startup_s"] = round(server.start(), 3)
        out["rss_start_bytes"] = procstat.rss_bytes(server.pid)
        out["phases"] = run_phases(server, scenario, jobs, args)
        out["rss_end_bytes"] = procstat.rss_bytes(server.pid)
        for phase in out["phases"]:
            log(
                f"  {kind:<9} {phase['phase']:<15} {phase['jobs']:>7} jobs "
                f"{phase['jobs_per_s'] or 0:>10,.0f}/s {phase.get('server_cpu_us_per_job')} us/job"
                + (f" ({phase['errors']} errors)" if phase["errors"] else "")
            )
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
        out["server_log"] = server.log_tail()
        log(f"  {kind} {scenario} rep {rep} FAILED: {out['error']}\n{out['server_log']}")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if store in ("sqlite", "file"):
            for leftover in Path(location).glob(f"{run_id}*"):
                shutil.rmtree(leftover, ignore_errors=True)
                leftover.unlink(missing_ok=True)
        if scenario in ("postgres", "mysql"):
            _drop_table(location, run_id)
    return out


def _drop_table(url: str, table: str) -> None:
    with contextlib.suppress(Exception):
        from tests.dbservers import drop_tables

        drop_tables(url, table)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stores", default=",".join(ALL_SCENARIOS), help="comma list of " + ",".join(ALL_SCENARIOS)
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per server and store")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every job count")
    parser.add_argument(
        "--connections", default="1,10,50", help="in-memory bg-submit connection counts"
    )
    parser.add_argument("--durable-connections", type=int, default=10)
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=5.0,
        help="durable stores: size bg-submit for this long (0: fixed counts)",
    )
    parser.add_argument(
        "--probe-jobs", type=int, default=200, help="durable stores: jobs of the sizing probe"
    )
    parser.add_argument("--store-dir", help="where SQLite files and journals go (temp dir)")
    parser.add_argument("--window", type=int, default=100, help="submits in flight per conn")
    parser.add_argument("--payload", type=int, default=100, help="bytes of job data")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--drain-connections", type=int, default=10)
    parser.add_argument("--grabs", type=int, default=1, help="GRAB_JOBs in flight per worker")
    parser.add_argument(
        "--no-unique", dest="unique", action="store_false",
        help="send empty unique keys (default: a distinct key per job, as libgearman does)",
    )  # fmt: skip
    parser.add_argument("--fg-jobs", type=int, default=10_000)
    parser.add_argument("--fg-clients", type=int, default=10)
    parser.add_argument("--fg-workers", type=int, default=10)
    parser.add_argument("--replay-jobs", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="replay 1,000,000 jobs")
    parser.add_argument("--postgres-url", help="use this PostgreSQL instead of a throwaway one")
    parser.add_argument("--mysql-url", help="use this MySQL/MariaDB instead of a throwaway one")
    parser.add_argument("--quick", action="store_true", help="smoke run: scale 0.1, 1 repeat")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/compare-*.json)")
    args = parser.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.quick:
        args.scale, args.repeat, args.fg_jobs, args.target_seconds = 0.1, 1, 1000, 1.0
        args.replay_jobs = 10_000
    if args.million:
        args.replay_jobs = 1_000_000
    scenarios = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = set(scenarios) - set(ALL_SCENARIOS)
    if unknown:
        parser.error(f"unknown store(s): {', '.join(sorted(unknown))}")

    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": procstat.machine(),
        "versions": environment_note(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "job_counts": {s: {k: int(n * args.scale) for k, n in JOBS[s].items()} for s in JOBS},
        "runs": [],
        "skipped": {},
        "replay": [],
    }
    log(f"machine: {doc['machine']}; gearmand: {doc['versions']['gearmand']}")
    helpers: list[Any] = []
    try:
        for scenario in scenarios:
            if scenario == "replay":
                continue
            location = ""
            if scenario in ("postgres", "mysql"):
                url = args.postgres_url if scenario == "postgres" else args.mysql_url
                if url is None:
                    try:
                        log(f"starting a throwaway {scenario} server")
                        url, handle = start_database(scenario)
                        helpers.append(handle)
                    except Exception as exc:
                        doc["skipped"][scenario] = f"no {scenario} server: {exc}"
                        log(doc["skipped"][scenario])
                        continue
                location = url
            memcached = None
            if scenario == "memcached":
                memcached = Memcached()
                helpers.append(memcached)
                location = memcached.address
            kinds = ["gearstore"] + (["gearmand"] if gearmand_supports(STORES[scenario][0]) else [])
            if "gearmand" not in kinds:
                doc["skipped"][f"{scenario}/gearmand"] = "gearmand has no such queue type"
            for rep in range(args.repeat):
                order = kinds if rep % 2 == 0 else kinds[::-1]
                log(f"{scenario}: repetition {rep + 1}/{args.repeat} ({' then '.join(order)})")
                for kind in order:
                    if memcached is not None:
                        memcached.flush()
                    doc["runs"].append(run_one(scenario, kind, rep, location, args))
        if "replay" in scenarios:
            for fn in (replay.replay_gearstore, replay.replay_gearmand):
                log(f"replay: {fn.__name__} with {args.replay_jobs} jobs")
                doc["replay"].append(fn(args.replay_jobs, args.payload))
    finally:
        for helper in helpers:
            with contextlib.suppress(Exception):
                helper.close()

    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    med = report.medians(doc["runs"])
    doc["medians"] = med
    doc["goals"] = report.goals(med)
    RESULTS.mkdir(exist_ok=True)
    path = (
        Path(args.output)
        if args.output
        else RESULTS / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.write_text(json.dumps(doc, indent=1))

    print(
        f"gearstore vs gearmand — {doc['started']}, {doc['machine']['cpus']} CPUs "
        f"({doc['machine']['cpu_model']}), load {doc['machine']['loadavg_at_start'][0]:.2f}"
    )
    print(
        f"median of {args.repeat} run(s); load: {args.processes} processes; "
        f"ratios are gearstore/gearmand (jobs/s: higher is better, us/job: lower is better)\n"
    )
    print(report.table(med))
    if doc["replay"]:
        print("\nreplay (sqlite store, restart with N queued jobs)")
        print(report.replay_table(doc["replay"]))
    print("\ngoals")
    print(report.goals_table(doc["goals"]))
    for what, why in doc["skipped"].items():
        print(f"skipped {what}: {why}")
    failed = [r for r in doc["runs"] if "error" in r]
    for run in failed:
        print(f"FAILED {run['scenario']}/{run['server']} rep {run['rep']}: {run['error']}")
    print(f"\nresults: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
