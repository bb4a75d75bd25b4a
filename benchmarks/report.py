"""Turn the runs of compare.py into medians, a text table and a goals check."""

from __future__ import annotations

import statistics
from typing import Any

SERVERS = ("gearstore", "gearmand")

#: (scenario, phase, what is compared, how gearstore must relate to gearmand, reference)
GOALS: list[dict[str, Any]] = [
    {"name": "in-memory bg submit: server CPU <= 16 us/job (Perl Gearman::Server)",
     "scenario": "builtin", "phase": "bg-submit c=10", "metric": "server_cpu_us_per_job",
     "absolute_max": 16.0},
    {"name": "in-memory bg submit: server CPU within 3x gearmand's (~5 us)",
     "scenario": "builtin", "phase": "bg-submit c=10", "metric": "server_cpu_us_per_job",
     "max_ratio": 3.0, "reference": 5.0},
    {"name": "SQLite (disk) bg submits/s >= 10x gearmand's (~3.5k/s)",
     "scenario": "sqlite", "phase": "bg-submit c=10", "metric": "jobs_per_s",
     "min_ratio": 10.0, "reference": 3500.0},
    {"name": "SQLite (tmpfs) bg submits/s >= 10x gearmand's (~3.5k/s)",
     "scenario": "sqlite-tmpfs", "phase": "bg-submit c=10", "metric": "jobs_per_s",
     "min_ratio": 10.0, "reference": 3500.0},
    {"name": "PostgreSQL bg submits/s >= 3x gearmand's (~13k/s)",
     "scenario": "postgres", "phase": "bg-submit c=10", "metric": "jobs_per_s",
     "min_ratio": 3.0, "reference": 13000.0},
    {"name": "MySQL bg submits/s >= 3x gearmand's (~10k/s)",
     "scenario": "mysql", "phase": "bg-submit c=10", "metric": "jobs_per_s",
     "min_ratio": 3.0, "reference": 10000.0},
    {"name": "memcached bg submits/s >= gearmand's (~77k/s)",
     "scenario": "memcached", "phase": "bg-submit c=10", "metric": "jobs_per_s",
     "min_ratio": 1.0, "reference": 77000.0},
]  # fmt: skip


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """scenario -> phase -> server -> median figures over the repetitions."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        for phase in run.get("phases", []):
            key = (run["scenario"], phase["phase"], run["server"])
            grouped.setdefault(key, []).append(phase)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for (scenario, phase, server), items in grouped.items():
        fig: dict[str, Any] = {
            "runs": len(items),
            "jobs": items[0]["jobs"],
            "errors": sum(i["errors"] for i in items),
            "jobs_per_s": _median([i["jobs_per_s"] for i in items]),
            "server_cpu_us_per_job": _median([i.get("server_cpu_us_per_job") for i in items]),
            "layout": {k: items[0][k] for k in ("processes", "connections", "window", "clients",
                                                 "workers", "grabs_in_flight") if k in items[0]},
        }  # fmt: skip
        if "latency_ms" in items[0]:
            fig["latency_ms"] = {
                q: _median([i["latency_ms"][q] for i in items]) for q in items[0]["latency_ms"]
            }
        out.setdefault(scenario, {}).setdefault(phase, {})[server] = fig
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(med: dict[str, Any]) -> str:
    """The human table: rates, server CPU per job, ratios gearstore/gearmand."""
    head = (
        f"{'store':<12} {'phase':<15} {'N gs/gm':>15} {'gs jobs/s':>10} {'gm jobs/s':>10}"
        f" {'ratio':>6} {'gs us/job':>10} {'gm us/job':>10} {'ratio':>6}"
    )
    lines = [head, "-" * len(head)]
    for scenario, phases in med.items():
        for phase, by_server in phases.items():
            gs, gm = by_server.get("gearstore", {}), by_server.get("gearmand", {})
            n = f"{gs.get('jobs', '-')}/{gm.get('jobs', '-')}"
            lines.append(
                f"{scenario:<12} {phase:<15} {n:>15}"
                f" {_fmt(gs.get('jobs_per_s')):>10} {_fmt(gm.get('jobs_per_s')):>10}"
                f" {_fmt(_ratio(gs.get('jobs_per_s'), gm.get('jobs_per_s')), 2):>6}"
                f" {_fmt(gs.get('server_cpu_us_per_job'), 1):>10}"
                f" {_fmt(gm.get('server_cpu_us_per_job'), 1):>10}"
                f" {_fmt(_ratio(gs.get('server_cpu_us_per_job'), gm.get('server_cpu_us_per_job')), 2):>6}"  # noqa: E501
            )
            for server, fig in (("gs", gs), ("gm", gm)):
                if "latency_ms" in fig:
                    lat = fig["latency_ms"]
                    lines.append(
                        f"{'':<12} {'  latency ' + server:<15} ms p50 {lat['p50']} p90 {lat['p90']}"
                        f" p99 {lat['p99']} max {lat['max']}"
                    )
            errors = gs.get("errors", 0) + gm.get("errors", 0)
            if errors:
                lines.append(f"{'':<12} {'':<15} !! {errors} ERROR replies")
    return "\n".join(lines)


def replay_table(replays: list[dict[str, Any]]) -> str:
    """Restart-with-N-jobs figures."""
    lines = [
        f"{'server':<10} {'jobs':>9} {'accepting s':>12} {'all queued s':>13} {'jobs/s':>10}"
        f" {'RSS empty MiB':>14} {'RSS after MiB':>14} {'B/job':>7} {'queued':>9}"
    ]
    for r in replays:
        if "error" in r:
            lines.append(f"{r['server']:<10} {r['jobs']:>9} ERROR {r['error'].splitlines()[0]}")
            continue
        lines.append(
            f"{r['server']:<10} {r['jobs']:>9} {r['restart_until_accepting_s']:>12.2f}"
            f" {r['restart_until_all_queued_s']:>13.2f}"
            f" {_fmt(r['replay_jobs_per_s']):>10} {r['rss_empty_bytes'] / 2**20:>14.1f}"
            f" {r['rss_replayed_bytes'] / 2**20:>14.1f} {r['rss_bytes_per_job']:>7}"
            f" {r['queued_after_restart']:>9}"
        )
    return "\n".join(lines)


def goals(med: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with the measured figures and met / not met / not measured."""
    out = []
    for goal in GOALS:
        by_server = med.get(goal["scenario"], {}).get(goal["phase"], {})
        gs = by_server.get("gearstore", {}).get(goal["metric"])
        gm = by_server.get("gearmand", {}).get(goal["metric"])
        verdict: str
        if "absolute_max" in goal:
            verdict = "not measured" if gs is None else str(gs <= goal["absolute_max"])
        else:
            ratio = _ratio(gs, gm)
            if ratio is None:
                verdict = "not measured"
            elif "max_ratio" in goal:
                verdict = str(ratio <= goal["max_ratio"])
            else:
                verdict = str(ratio >= goal["min_ratio"])
        verdict = {"True": "MET", "False": "NOT MET"}.get(verdict, verdict)
        if any(fig.get("errors") for fig in by_server.values()):
            verdict = "INVALID: ERROR replies"
        entry = {"goal": goal["name"], "gearstore": gs, "gearmand": gm,
                 "ratio": _ratio(gs, gm), "verdict": verdict}  # fmt: skip
        if "reference" in goal and gs is not None:
            # the same test against the brief's reference figure for gearmand
            entry["ratio_to_reference"] = _ratio(gs, goal["reference"])
            limit = goal.get("max_ratio") or goal.get("min_ratio")
            ok = entry["ratio_to_reference"] is not None and (
                entry["ratio_to_reference"] <= limit
                if "max_ratio" in goal
                else entry["ratio_to_reference"] >= limit
            )
            entry["verdict_vs_reference"] = "MET" if ok else "NOT MET"
        out.append(entry)
    return out


def goals_table(checked: list[dict[str, Any]]) -> str:
    """Goals as text lines."""
    return "\n".join(
        f"[{g['verdict']:^12}] {g['goal']}: gearstore {_fmt(g['gearstore'], 1)}, "
        f"gearmand {_fmt(g['gearmand'], 1)}, ratio {_fmt(g['ratio'], 2)}"
        + (
            f"; vs the reference figure: ratio {_fmt(g['ratio_to_reference'], 2)}"
            f" {g['verdict_vs_reference']}"
            if "ratio_to_reference" in g
            else ""
        )
        for g in checked
    )
