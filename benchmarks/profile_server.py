"""Profile the gearstore server under load with py-spy (sampling, attached by pid).

Starts gearstore with the given store, attaches ``py-spy record`` to it while the load
generator runs one phase, and prints the hottest functions by own time (self) and by
inclusive time, from py-spy's collapsed stacks. The raw stacks stay in
benchmarks/results/ for flame graphs (``flamegraph.pl`` or speedscope.app).

Usage: .venv/bin/python benchmarks/profile_server.py [--store sqlite] [--mode bg-submit]
Needs py-spy: .venv/bin/pip install py-spy
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen
from servers import Memcached, ServerProc, new_workdir, store_flags

RESULTS = Path(__file__).resolve().parent / "results"


def hot_spots(collapsed: Path, top: int) -> str:
    """Top functions by self and inclusive sample counts from a collapsed-stack file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (", 1)[0] + _where(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    lines = [f"{total} samples", "", "self %   function (file:line of the function)"]
    lines += [f"{100 * n / total:6.1f}   {name}" for name, n in own.most_common(top)]
    lines += ["", "incl %   function"]
    lines += [f"{100 * n / total:6.1f}   {name}" for name, n in incl.most_common(top * 2)]
    return "\n".join(lines)


def _where(frame: str) -> str:
    # py-spy frames look like "name (path/to/file.py:123)"; keep the file's last parts
    if " (" not in frame:
        return ""
    loc = frame.split(" (", 1)[1].rstrip(")")
    path, _, _line = loc.rpartition(":")
    return f" ({'/'.join(Path(path).parts[-2:])})"


def main() -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="builtin", help="builtin, sqlite, file, memcached")
    parser.add_argument("--mode", default="bg-submit", choices=["bg-submit", "drain", "fg"])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    pyspy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if pyspy is None:
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    workdir = new_workdir("profile")
    memcached = Memcached() if args.store == "memcached" else None
    location = memcached.address if memcached else str(workdir)
    server = ServerProc("gearstore", store_flags(args.store, location, "profile"), workdir)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile-{args.store}-{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    try:
        server.start()
        if args.mode == "drain":  # fill first, unprofiled
            loadgen.bg_submit("127.0.0.1", server.port, args.jobs, args.connections)
        spy = subprocess.Popen(
            [pyspy, "record", "--pid", str(server.pid), "--rate", str(args.rate),
             "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(1.0)  # let py-spy attach before the load starts
        if args.mode == "bg-submit":
            res = loadgen.bg_submit(
                "127.0.0.1", server.port, args.jobs, args.connections, server_pid=server.pid
            )
        elif args.mode == "drain":
            res = loadgen.drain("127.0.0.1", server.port, args.connections, server_pid=server.pid)
        else:
            res = loadgen.fg_roundtrip("127.0.0.1", server.port, args.jobs, server_pid=server.pid)
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _, err = spy.communicate(timeout=60)
        print(
            f"{args.mode} on {args.store}: {res['jobs']} jobs, {res['jobs_per_s']:,.0f}/s, "
            f"{res.get('server_cpu_us_per_job')} us server CPU/job"
        )
        if not out.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')}", file=sys.stderr)
            return 1
        print(hot_spots(out, args.top))
        print(f"\ncollapsed stacks: {out}")
    finally:
        server.stop()
        if memcached is not None:
            memcached.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
