"""Resource samples of the worker and of the Prefect server, and the "flat" judgment.

A *family* is a root process (the worker, the server), its descendants, and every
process of a session one of them led or belonged to: the process worker starts each
flow run in a new session, and a Great Expectations validator orphaned by its flow-run
process (re-parented to init, which a walk of the process tree would miss) keeps that
session. Each sample (every `interval` s, psutil) records, per family, the summed RSS,
open file descriptors, threads and processes (and the CPU seconds used so far), the
same for the worker process alone, and each flow run's own peak (its process and its
validator: the session it leads, named by the PREFECT__FLOW_RUN_ID in its environment).

Flat, for the long-lived processes (the worker process, the server family): after a
warm-up (until the first cycle has completed) the samples are split in thirds; a series
is flat when the median of the last third is at most `first-third median x (1 +
relative) + absolute` (relative 20 %; absolute 32 MB, 16 descriptors, 8 threads).
Steady growth cycle after cycle fails that; the noise of runs starting and ending does
not. The worker family as a whole is reported, not judged: its size follows how many
flow runs are in flight and in which phase. What could leak in it is judged instead:
each flow run's peak, against the runs of the same technology and kind (backup or
restore) before it (the median of the last third of them against the first third, the
same tolerances; with two runs, the second against the first), and left-over processes
(anything but the worker in its family once the last run has ended). Each verdict also
carries, for RSS, the least-squares slope of its series (per hour, or per run), which
tells a slow steady climb (what a long soak must watch) from a step; it is reported,
not judged.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

MB = 2**20
TOLERANCE = {"rss_mb": (0.20, 32.0), "fds": (0.20, 16.0), "threads": (0.20, 8.0)}
SERIES = [
    ("worker", "the `prefect worker` process", True),
    ("server", "the `prefect server` process family", True),
    ("worker_family", "the worker with its flow-run processes (not judged)", False),
]
RUN_ID = "PREFECT__FLOW_RUN_ID"


class Families:
    """Who belongs to a root's family: its descendants, and every process of a session
    one of them ever led or belonged to (the root's own, the flow runs' sessions). A
    process orphaned by its parent's death (re-parented to init) keeps its session, so
    it stays in the family; that is how a leaked process is seen."""

    def __init__(self, roots: list[int]) -> None:
        self.sessions: dict[int, set[int]] = {root: {root} for root in roots}
        self.since = time.time() - 5

    def snapshot(self) -> dict[int, list[tuple[psutil.Process, int]]]:
        """Every root's family now, (process, session id) pairs, from one pass over the
        process table."""
        table: list[tuple[psutil.Process, int, int]] = []
        for process in psutil.process_iter(["ppid"]):
            try:
                table.append((process, process.info["ppid"], os.getsid(process.pid)))
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        children: dict[int, list[int]] = {}
        for process, ppid, _ in table:
            children.setdefault(ppid, []).append(process.pid)
        families = {}
        for root, sessions in self.sessions.items():
            below, pending = {root}, [root]
            while pending:
                for child in children.get(pending.pop(), []):
                    if child not in below:
                        below.add(child)
                        pending.append(child)
            sessions |= {sid for process, _, sid in table if process.pid in below}
            members = []
            for process, _, sid in table:
                if process.pid in below:
                    members.append((process, sid))
                elif sid in sessions:
                    try:  # a session id is a pid: one reused by a newer process is not ours
                        if process.create_time() >= self.since:
                            members.append((process, sid))
                    except psutil.Error:
                        continue
            families[root] = members
        return families


def measure(
    processes: list[psutil.Process], cpu: dict[tuple[int, float], float] | None = None
) -> dict[str, float]:
    """Summed RSS, open descriptors, threads and processes; with `cpu` (kept by the
    caller between samples, per process), also the CPU seconds the family has used so
    far, exited processes counted at their last sample."""
    rss = fds = threads = count = 0
    for process in processes:
        try:
            with process.oneshot():
                rss += process.memory_info().rss
                fds += process.num_fds()
                threads += process.num_threads()
                if cpu is not None:
                    times = process.cpu_times()
                    cpu[(process.pid, process.create_time())] = times.user + times.system
                count += 1
        except psutil.Error:
            continue
    row = {"rss_mb": round(rss / MB, 1), "fds": fds, "threads": threads, "processes": count}
    if cpu is not None:
        row["cpu_s"] = round(sum(cpu.values()), 1)
    return row


class Sampler(threading.Thread):
    """Samples the worker and server families every `interval` s until stopped;
    `extra()` adds the load test's own counters (runs in flight) to each sample."""

    def __init__(
        self, worker: int, server: int, extra: Callable[[], dict], interval: float = 1.0
    ) -> None:
        super().__init__(name="sampler", daemon=True)
        self.roots = {"worker": worker, "server": server}
        self.families = Families([worker, server])
        self.extra = extra
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.cpu: dict[str, dict[tuple[int, float], float]] = {"worker": {}, "server": {}}
        self.run_peaks: dict[str, dict[str, float]] = {}  # flow run id -> peaks
        self._run_of: dict[tuple[int, float], str] = {}  # session leader -> flow run id
        self.started = time.monotonic()
        self.stopped = threading.Event()

    def _flow_run(self, sid: int, members: list[psutil.Process]) -> str:
        """The flow run a session belongs to: its leader's PREFECT__FLOW_RUN_ID."""
        leader = next((p for p in members if p.pid == sid), None)
        if leader is None:
            return f"session-{sid}"  # the leader is gone: what is left is an orphan
        try:
            key = (sid, leader.create_time())
            if key not in self._run_of:
                self._run_of[key] = leader.environ().get(RUN_ID) or f"session-{sid}"
            return self._run_of[key]
        except psutil.Error:
            return f"session-{sid}"

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t": round(time.monotonic() - self.started, 1)}
        families = self.families.snapshot()
        worker = self.roots["worker"]
        worker_family = [p for p, _ in families[worker]]
        row["worker"] = measure([p for p in worker_family if p.pid == worker])
        row["worker_family"] = measure(worker_family, self.cpu["worker"])
        row["server"] = measure([p for p, _ in families[self.roots["server"]]], self.cpu["server"])
        sessions: dict[int, list[psutil.Process]] = {}
        for process, sid in families[worker]:
            if sid != worker:
                sessions.setdefault(sid, []).append(process)
        for sid, members in sessions.items():
            now = measure(members)
            peak = self.run_peaks.setdefault(self._flow_run(sid, members), {})
            for metric, value in now.items():
                peak[metric] = max(peak.get(metric, 0), value)
        mine = resource.getrusage(resource.RUSAGE_SELF)
        row["driver_cpu_s"] = round(mine.ru_utime + mine.ru_stime, 1)  # this process's
        row["load1"] = round(os.getloadavg()[0], 2)
        row.update(self.extra())
        return row

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append(self.sample())
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=30)

    def leftover(self, wait: float = 30.0) -> list[str]:
        """What is left in the worker's family but the worker, once its runs have ended
        (a flow-run process exits a moment after its run is final: waited for)."""
        deadline = time.monotonic() + wait
        worker = self.roots["worker"]
        while True:
            rest = [p for p, _ in self.families.snapshot()[worker] if p.pid != worker]
            if not rest or time.monotonic() > deadline:
                break
            time.sleep(1)
        out = []
        for process in rest:
            try:
                out.append(f"{process.pid}: {' '.join(process.cmdline())[:200]}")
            except psutil.Error:
                continue
        return out


def _trend(xs: list[float], series: list[float]) -> float | None:
    """The least-squares slope of series over xs (None for fewer than 3 points)."""
    if len(series) < 3 or len(set(xs)) < 2:
        return None
    return statistics.linear_regression(xs, series).slope


def _verdict(
    key: str,
    title: str,
    metric: str,
    series: list[float],
    judged: bool,
    xs: list[float],
    per: str,
    scale: float = 1.0,
) -> dict:
    relative, absolute = TOLERANCE[metric]
    # Files and threads follow the runs in flight (the drain at the end pulls a fitted
    # line down): their growth shows in the thirds and in the left-over processes.
    slope = _trend(xs, series) if metric == "rss_mb" else None
    third = max(1, len(series) // 3)
    first = statistics.median(series[:third])
    last = statistics.median(series[-third:])
    limit = first * (1 + relative) + absolute
    return {
        "series": key,
        "title": title,
        "metric": metric,
        "samples": len(series),
        "first_sample": series[0],
        "last_sample": series[-1],
        "first_third_median": round(first, 1),
        "last_third_median": round(last, 1),
        "max": max(series),
        "ratio": round(last / first, 3) if first else None,
        "limit": round(limit, 1),
        "flat": (last <= limit) if judged else None,
        # Not judged: the fitted growth, to tell a slow steady climb from a step.
        "trend": round(slope * scale, 2) if slope is not None else None,
        "trend_per": per,
    }


def judge(
    samples: list[dict[str, Any]],
    warm_up_until: float,
    runs: list[tuple[str, str]],
    run_peaks: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """The verdict on every series (see the module's docstring); `runs` are (group,
    flow run id) in the order the runs started. flat is None where not judged."""
    window = [s for s in samples if s["t"] >= warm_up_until]
    if len(window) < 9:
        window = samples
    verdicts = []
    for key, title, judged in SERIES:
        for metric in TOLERANCE:
            series = [s[key][metric] for s in window]
            if series:
                xs = [s["t"] for s in window]
                verdicts.append(
                    _verdict(key, title, metric, series, judged, xs, "hour", scale=3600)
                )
    groups: dict[str, list[dict[str, float]]] = {}
    for group, run_id in runs:
        if run_id in run_peaks:
            groups.setdefault(group, []).append(run_peaks[run_id])
    for group, peaks in groups.items():
        if len(peaks) < 2:
            continue
        for metric in TOLERANCE:
            title = f"peak of each {group} flow run (process + validator)"
            series = [p[metric] for p in peaks]
            xs = list(range(len(series)))
            verdicts.append(_verdict(f"runs:{group}", title, metric, series, True, xs, "run"))
    return verdicts
