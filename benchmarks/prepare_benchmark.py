"""Prepare time and peak memory: pandas (one process) against Apache Beam, on synthetic partitioned logs.

For each size the script writes a synthetic log as Parquet partitions (1,000,000 events per file: users, Zipf
items, timestamps, an action), then prepares it in a child process with each path and measures:

* wall time of the child (including interpreter and TensorFlow start-up);
* max RSS of the child process itself (``ru_maxrss``): for pandas the whole job, for Beam the driver,
  which on the DirectRunner also holds the runner's shuffle buffers; and of the largest Beam worker process;
* peak RSS of the child's whole process tree (sampled every 0.2 s), which adds the Beam worker processes.

From the pandas measurements it extrapolates, from the memory per event between the two largest sizes, the
log size at which pandas no longer fits in a given memory (``--memory-gb``, default 24). That number is an
extrapolation, not a measurement. Example::

    python benchmarks/prepare_benchmark.py --events 1e6 1e7 --beam-workers 2

Temporary data go under ``--work-dir`` (default: a new directory in /tmp) and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

EVENTS_PER_FILE = 1_000_000


def write_log(directory: str, events: int, seed: int = 0) -> str:
    """A synthetic log of ``events`` events as Parquet partitions; returns their glob.

    About 20 events per user and 100 per item (Zipf popularity), timestamps with same-second ties, and an
    ``action`` column (view, cart, buy).
    """
    import pandas as pd

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_users = max(1, events // 20)
    num_items = max(1, events // 100)
    actions = np.array(["view", "cart", "buy"], dtype=object)
    for part, start in enumerate(range(0, events, EVENTS_PER_FILE)):
        n = min(EVENTS_PER_FILE, events - start)
        frame = pd.DataFrame(
            {
                "user": np.char.add("u", rng.integers(0, num_users, n).astype(str)),
                "item": np.char.add("i", ((rng.zipf(1.3, n) - 1) % num_items).astype(str)),
                "time": rng.integers(1_500_000_000, 1_600_000_000, n) // 60 * 60,
                "action": actions[rng.choice(3, n, p=[0.7, 0.2, 0.1])],
            }
        )
        frame.to_parquet(os.path.join(directory, f"part-{part:05d}.parquet"), index=False)
    return os.path.join(directory, "part-*.parquet")


def child(args) -> None:
    """Runs one prepare (in the child process) and prints its statistics as JSON."""
    import tfsidefuse

    overrides = {
        "dataset.source": "parquet",
        "dataset.path": args.pattern,
        "dataset.name": "synthetic",
        "dataset.prepared_dir": args.out,
        "dataset.k_core": args.k_core,
    }
    config = tfsidefuse.load_config("demo/sasrec", overrides)
    options = None
    if args.mode == "beam":
        options = {"direct_running_mode": "multi_processing", "direct_num_workers": args.beam_workers}
    start = time.perf_counter()
    prepared = tfsidefuse.prepare(
        config, runner="DirectRunner" if args.mode == "beam" else None, pipeline_options=options
    )
    elapsed = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"prepare_s": elapsed, "max_rss": own, "worker_max_rss": workers, "stats": prepared.stats}))


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(mode: str, pattern: str, out: str, args) -> dict:
    """Runs one prepare in a child process; wall time, its max RSS, the peak RSS of its process tree."""
    cmd = [sys.executable, __file__, "--child", mode, "--pattern", pattern, "--out", out]
    cmd += ["--beam-workers", str(args.beam_workers)]
    if args.k_core:
        cmd += ["--k-core", str(args.k_core)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} prepare failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {
        "wall_s": wall,
        "prepare_s": result["prepare_s"],
        "max_rss_gb": result["max_rss"] / 1e9,
        "worker_max_rss_gb": result["worker_max_rss"] / 1e9,
        "peak_tree_gb": peak[0] / 1e9,
        "stats": result["stats"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=float, nargs="+", default=[1e6], help="log sizes (events)")
    parser.add_argument("--modes", nargs="+", default=["pandas", "beam"], choices=["pandas", "beam"])
    parser.add_argument("--beam-only-above", type=float, help="sizes above this run only the Beam path")
    parser.add_argument("--beam-workers", type=int, default=2, help="DirectRunner worker processes")
    parser.add_argument("--k-core", type=int, help="dataset.k_core (default: none)")
    parser.add_argument("--memory-gb", type=float, default=24.0, help="memory for the pandas extrapolation")
    parser.add_argument("--work-dir", help="where logs and prepared data go (default: a new /tmp directory)")
    parser.add_argument("--child", choices=["pandas", "beam"], help=argparse.SUPPRESS)
    parser.add_argument("--pattern", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.mode = args.child
        child(args)
        return

    work = args.work_dir or tempfile.mkdtemp(prefix="prepare-benchmark-", dir="/tmp")
    rows = []
    try:
        for events in (int(e) for e in args.events):
            log_dir = os.path.join(work, f"log-{events}")
            t = time.perf_counter()
            pattern = write_log(log_dir, events)
            print(f"# wrote {events:,} events in {time.perf_counter() - t:.0f} s", flush=True)
            stats = {}
            for mode in args.modes:
                if mode == "pandas" and args.beam_only_above and events > args.beam_only_above:
                    continue
                out = os.path.join(work, f"prepared-{mode}-{events}")
                row = {"events": events, "mode": mode, **measure(mode, pattern, out, args)}
                stats[mode] = row.pop("stats")
                rows.append(row)
                print(f"# {json.dumps(row)}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
            if len(stats) == 2 and stats["pandas"] != stats["beam"]:
                raise RuntimeError(f"pandas and Beam stats differ at {events} events")
            shutil.rmtree(log_dir, ignore_errors=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    cpu = platform.processor() or platform.machine()
    print(f"\n{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}\n")
    print(
        "| events | path | prepare (s) | wall incl. start-up (s) | max RSS, prepare process (GB) "
        "| max RSS, one Beam worker (GB) | peak RSS, all processes (GB) | peak bytes/event |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        worker = f"{r['worker_max_rss_gb']:.2f}" if r["mode"] == "beam" else "–"
        print(
            f"| {r['events']:,} | {r['mode']} | {r['prepare_s']:.1f} | {r['wall_s']:.1f} | {r['max_rss_gb']:.2f} "
            f"| {worker} | {r['peak_tree_gb']:.2f} | {r['peak_tree_gb'] * 1e9 / r['events']:.0f} |"
        )
    pandas = sorted((r["events"], r["max_rss_gb"]) for r in rows if r["mode"] == "pandas")
    if len(pandas) >= 2:
        (n1, m1), (n2, m2) = pandas[-2], pandas[-1]
        slope = (m2 - m1) / (n2 - n1)
        limit = n2 + (args.memory_gb - m2) / slope
        print(
            f"\nExtrapolation (not measured): pandas grows by {slope * 1e9:.0f} bytes per event between "
            f"{n1:,} and {n2:,} events, so it needs {args.memory_gb:g} GB at about {limit:.2g} events."
        )
    elif pandas:
        n, m = pandas[-1]
        print(
            f"\nExtrapolation (not measured): at {m * 1e9 / n:.0f} bytes per event pandas needs "
            f"{args.memory_gb:g} GB at about {args.memory_gb / m * n:.2g} events."
        )


if __name__ == "__main__":
    main()
