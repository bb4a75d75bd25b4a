"""Server-side figures read straight from /proc: CPU time and resident memory.

CPU time is the primary benchmark metric because this machine is shared: wall-clock
rates move with whatever else runs, but the CPU the server process itself spent per
job barely does. utime+stime in /proc/PID/stat cover every thread of the process
(gearmand's I/O threads, gearstore's store-writer thread), including threads that
already exited, in clock ticks (usually 10 ms), so a phase should cost the server at
least ~0.5 s of CPU for a 2 % resolution.
"""

from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process ``pid`` has used so far (all threads)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    # the command name (field 2) may hold spaces or parentheses: split after the last ')'
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS) in bytes."""
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settle(pid: int, quiet: float = 0.3, timeout: float = 15.0) -> float:
    """Wait until ``pid`` has used no CPU for ``quiet`` seconds; return its CPU seconds.

    A phase ends on the client's side before the server has finished every piece of
    work it caused (gearstore deletes drained jobs from the store in a later batch):
    waiting for the server to go idle charges that work to the phase that caused it.
    """
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = cpu_seconds(pid)
        if now != last:
            last = now
            still_since = time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
    return last


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loadavg_at_start": os.getloadavg(),
        "kernel": os.uname().release,
    }
