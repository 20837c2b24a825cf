"""CPU per reading of the local history's inserts, as the agent makes them.

    .venv/bin/python benchmarks/bench_history.py [--runs 5] [--flushes 1200] [--machines 210]
        [--signals 50] [--max-mb 256] [--retention-h 72] [--commit-every-s S]
        [--whole-prunes] [--history-module FILE]

The load of ``factory-agent bench`` (Modbus, 210 machines × 50 float signals at 10 Hz): one
``History.add`` per 100 ms flush with one reading per machine (210 readings of 50 float32 values
in 0..100, as Modbus registers decode them; acquisition times 100 ms apart per machine, the
machines a little apart within a flush); the history prunes itself as in the agent (every
``prune_every_s`` of 30 s, in steps, one more after each commit until done), or with
``--whole-prunes`` the bench calls ``History.prune()`` every 300 flushes (30 s), all at once, as
versions before the steps did. Each run first fills a new file to its budget (not timed)
so the timed flushes see the agent's steady state: the file at ``max_bytes``, every prune
dropping the oldest rows and new rows reusing the freed pages. With ``--retention-h`` shorter
than the timed span (e.g. ``0.01`` = 36 s of readings) the age limit does the pruning instead.

The history sees a simulated monotonic clock, 100 ms a flush, so it commits every
``commit_every_s`` of plant time (``--commit-every-s`` overrides it; ``0`` commits every add, as
versions without the parameter do) however fast the loop runs.

Figures are process CPU time (``time.process_time``: SQLite, JSON and Python, WAL checkpoints
included) of ``add`` and ``prune`` only, building the readings not counted, per reading and per
value (one register value), median of the runs (min–max in brackets); and the longest time one
flush spent in the history (wall: ``add``, and the bench's ``prune`` after it), which the
agent's event loop waits for.

``--history-module FILE`` loads ``History`` from another copy of ``agent/history.py``, to compare
with an older version in one series, e.g. ``git show HEAD~1:agent/history.py > /tmp/old.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import random
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.types import Reading  # noqa: E402

FLUSH_NS = 100_000_000  # 100 ms: the pipeline's flush_s and the plant's 10 Hz
PRUNE_EVERY = 300  # flushes: the agent's prune_every_s (30 s) at 10 Hz
POOL = 500  # distinct field dicts, reused round robin (values do not repeat within a flush)


def history_class(module_file: Path | None) -> Any:
    if module_file is None:
        from agent.history import History  # noqa: PLC0415

        return History
    spec = importlib.util.spec_from_file_location("bench_history_impl", module_file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--history-module {module_file}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.History


def field_pool(signals: int, seed: int = 1) -> list[dict[str, float | None]]:
    """Float32 values in 0..100 as Python floats (what a Modbus float register decodes to)."""
    rng = random.Random(seed)
    f32 = struct.Struct("<f")
    names = [f"s{i:02d}" for i in range(signals)]
    return [
        {n: f32.unpack(f32.pack(rng.uniform(0.0, 100.0)))[0] for n in names} for _ in range(POOL)
    ]


class SimClock:
    """The monotonic clock the history sees: 100 ms a flush, however fast the loop runs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Plant:
    """The readings of one flush after another, times as the agent stamps them."""

    def __init__(self, machines: int, signals: int, start_ns: int) -> None:
        self.names = [f"m{i:03d}" for i in range(machines)]
        self.pool = field_pool(signals)
        self.offsets = [i * FLUSH_NS // machines for i in range(machines)]  # polls spread out
        self.start_ns = start_ns
        self.flushes = 0
        self.k = 0

    def flush(self, clock: SimClock) -> list[Reading]:
        clock.now += FLUSH_NS / 1e9
        base = self.start_ns + self.flushes * FLUSH_NS
        self.flushes += 1
        out = []
        for name, off in zip(self.names, self.offsets, strict=True):
            out.append(Reading(name, base + off, self.pool[self.k % POOL], {"line": "l1"}))
            self.k += 1
        return out


@dataclass
class Result:
    readings: int
    values: int
    add_s: float
    prune_s: float
    pruned: int
    size_mb: float
    longest_ms: float

    @property
    def us_per_reading(self) -> float:
        return (self.add_s + self.prune_s) / self.readings * 1e6

    @property
    def us_per_value(self) -> float:
        return (self.add_s + self.prune_s) / self.values * 1e6

    @property
    def prune_us_per_reading(self) -> float:
        return self.prune_s / self.readings * 1e6


def run(cls: Any, workdir: Path, args: argparse.Namespace) -> Result:
    path = workdir / "history.db"
    for p in workdir.glob("history.db*"):
        p.unlink()
    max_bytes = int(args.max_mb * (1 << 20))
    clock = SimClock()
    opts: dict[str, Any] = {
        "max_bytes": max_bytes,
        "retention_h": args.retention_h,
        # the agent's 30 s, or pruned below every PRUNE_EVERY flushes
        "prune_every_s": 1e12 if args.whole_prunes else PRUNE_EVERY * FLUSH_NS / 1e9,
    }
    if "clock" in inspect.signature(cls).parameters:  # older versions commit every add
        opts["clock"] = clock  # commits every commit_every_s of simulated time
        if args.commit_every_s is not None:
            opts["commit_every_s"] = args.commit_every_s
    h = cls(path, **opts)
    plant = Plant(args.machines, args.signals, time.time_ns() - 10**12)
    # Fill to the budget (and one prune past it): the steady state of an agent that has run
    # for a while.
    while h.size_bytes() < max_bytes:
        h.add(plant.flush(clock))
    for _ in range(PRUNE_EVERY):
        h.add(plant.flush(clock))
    h.prune()
    pruned0 = h.rows_pruned
    add_s = prune_s = longest = 0.0
    clock_cpu = time.process_time
    for i in range(1, args.flushes + 1):
        batch = plant.flush(clock)
        w0 = time.perf_counter()
        t0 = clock_cpu()
        pruned_before = h.rows_pruned
        h.add(batch)
        t1 = clock_cpu()
        if h.rows_pruned != pruned_before:  # the history pruned a step itself
            prune_s += t1 - t0
        else:
            add_s += t1 - t0
        if args.whole_prunes and i % PRUNE_EVERY == 0:
            getattr(h, "commit", lambda: None)()  # prune() would: counted as inserting
            t2 = clock_cpu()
            add_s += t2 - t1
            h.prune()
            prune_s += clock_cpu() - t2
        longest = max(longest, time.perf_counter() - w0)
    t0 = clock_cpu()
    getattr(h, "commit", lambda: None)()  # what still waits for its commit (the new version)
    add_s += clock_cpu() - t0
    n = args.flushes * args.machines
    size = h.size_bytes() / (1 << 20)
    pruned = h.rows_pruned - pruned0
    h.close()
    return Result(n, n * args.signals, add_s, prune_s, pruned, size, longest * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--flushes", type=int, default=1200, help="timed flushes per run")
    parser.add_argument("--machines", type=int, default=210)
    parser.add_argument("--signals", type=int, default=50)
    parser.add_argument("--max-mb", type=float, default=256.0, help="the history's max_bytes")
    parser.add_argument("--retention-h", type=float, default=72.0)
    parser.add_argument(
        "--commit-every-s",
        type=float,
        default=None,
        help="the history's commit_every_s (default: its own)",
    )
    parser.add_argument(
        "--whole-prunes", action="store_true", help="prune all at once every 30 s (old way)"
    )
    parser.add_argument("--history-module", type=Path, default=None, metavar="FILE")
    args = parser.parse_args()
    if args.history_module is not None and not args.history_module.is_file():
        parser.error(f"--history-module {args.history_module}: no such file")
    cls = history_class(args.history_module)
    src = args.history_module or "agent/history.py"
    how = (
        f"whole prunes every {PRUNE_EVERY} flushes"
        if args.whole_prunes
        else "the history prunes itself (an add that pruned a step counts as pruning)"
    )
    print(f"{src}: {args.machines} machines × {args.signals} float signals, one add per 100 ms "
          f"flush, {how}; max {args.max_mb:g} MB, retention "
          f"{args.retention_h:g} h; {args.flushes} timed flushes per run")  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        for r in range(args.runs):
            res = run(cls, Path(tmp), args)
            results.append(res)
            print(f"  run {r + 1}: {res.us_per_reading:7.2f} µs/reading "
                  f"({res.prune_us_per_reading:.2f} of it pruning), {res.us_per_value:.3f} "
                  f"µs/value; {res.pruned:,} rows pruned, {res.size_mb:.1f} MB in use; "
                  f"longest flush in the history {res.longest_ms:.0f} ms",
                  flush=True)  # fmt: skip

    def fig(key: str, digits: int) -> str:
        xs = [getattr(r, key) for r in results]
        med = statistics.median(xs)
        return f"{med:.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"

    print(f"median of {args.runs}: {fig('us_per_reading', 2)} µs CPU per reading, "
          f"{fig('us_per_value', 3)} µs per value; pruning {fig('prune_us_per_reading', 2)} "
          f"µs per reading of it; longest flush in the history {fig('longest_ms', 0)} "
          "ms")  # fmt: skip


if __name__ == "__main__":
    main()
