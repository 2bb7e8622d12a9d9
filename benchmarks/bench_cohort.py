"""Cohort throughput: classify a cohort of generated CT series in-process and on 1 and 2 local
Dask workers; series per minute and the parallel efficiency of 2 workers against 1.

Writes ``--series`` CT phantoms (each its own study and series UIDs, one DICOM file per slice)
and classifies them with the bundled demo model (10 MC-dropout passes) the way ``classify`` does,
into a fresh results journal each time. Cluster runs are timed twice: end to end (start the
cluster, load the model on every worker, classify) and steady state (a started cluster whose
workers already hold the model; the best of ``--repeats`` runs), which is what a long cohort
sees. Efficiency is
rate(2 workers) / (2 x rate(1 worker)), steady state. The peer is the same cohort classified in
this process. The machine's load average is printed with each run: other work on the machine
takes cores from the workers.

    python benchmarks/bench_cohort.py [--series 40] [--slices 64] [--size 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import dask
from distributed import Client, LocalCluster

from napari_scan_classifier.cohort import (
    Options,
    bundle_ref,
    classify_cohort,
    worker_bundle,
)
from napari_scan_classifier.io.dicom_write import write_series
from napari_scan_classifier.models.bundled import load_default_bundle
from napari_scan_classifier.phantoms import make_ct_phantom
from napari_scan_classifier.results import ANSWERED


def write_cohort(folder: Path, series: int, slices: int, size: int) -> None:
    for number in range(series):
        volume = make_ct_phantom(number, shape=(slices, size, size), spacing=(2.5, 3.0, 3.0))
        write_series(volume.volume, folder / f"study{number:03d}", series_number=number + 1)


def timed(folder: Path, out: Path, client: Client | None = None) -> tuple[float, list[dict], float]:
    """Seconds to classify the cohort into a fresh journal (progress lines kept), its rows, and
    the CPU seconds the work used (this process in-process, else the workers' processes)."""
    out.with_suffix(".jsonl").unlink(missing_ok=True)
    scheduler = None if client is None else client.scheduler.address
    cpu = cpu_seconds(client)
    start = time.perf_counter()
    classify_cohort(
        [folder], None, out, options=Options(passes=10), scheduler=scheduler, stream=io.StringIO()
    )
    seconds = time.perf_counter() - start
    used = cpu_seconds(client) - cpu
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert all(row["status"] in ANSWERED for row in rows), "a series failed"
    return seconds, rows, used


def cpu_seconds(client: Client | None) -> float:
    if client is None:
        return time.process_time()
    return sum(client.run(time.process_time).values())


def best(folder: Path, out: Path, repeats: int, client: Client | None = None):
    """The fastest of ``repeats`` runs (other work on the machine only ever slows one down)."""
    return min((timed(folder, out, client) for _ in range(repeats)), key=lambda t: t[0])


def on_cluster(
    folder: Path, tmp: Path, workers: int, repeats: int
) -> tuple[float, tuple[float, list[dict], float]]:
    """End to end (start, model load, one run) and steady state (best later run) on ``workers``."""
    start = time.perf_counter()
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    try:
        with Client(cluster) as client:
            client.run(worker_bundle, bundle_ref(load_default_bundle()))  # model on every worker
            started = time.perf_counter() - start
            cold, _, _ = timed(folder, tmp / "cold.json", client)
            warm = best(folder, tmp / "warm.json", repeats, client)
    finally:
        cluster.close()
    return started + cold, warm


def per_series(rows: list[dict]) -> str:
    """Median seconds of each part of a series' work, where it ran."""
    parts = ("load", "preprocess", "predict", "uncertainty")
    found = {p: statistics.median(r["timings"].get(p, 0.0) for r in rows) for p in parts}
    return ", ".join(f"{part} {value:.2f}" for part, value in found.items())


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) {five:.1f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=40)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="steady-state runs; best kept")
    args = parser.parse_args()
    n = args.series
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        folder = tmp / "cohort"
        print(f"writing {n} CT series of {args.slices}x{args.size}x{args.size} ...", flush=True)
        write_cohort(folder, n, args.slices, args.size)
        print(load(), flush=True)
        timed(folder, tmp / "warmup.json")  # model load and compiled functions, not timed
        local, rows, cpu = best(folder, tmp / "local.json", args.repeats)
        print(
            f"in-process: {local:.1f} s, {n / local * 60:.1f} series/min, "
            f"{cpu / local:.2f} cores busy; {load()}"
        )
        print(f"  per series (s): {per_series(rows)}; CPU {cpu / n:.2f} s", flush=True)
        rates, per_cpu = {}, {}
        for workers in (1, 2):
            cold, (warm, rows, cpu) = on_cluster(folder, tmp, workers, args.repeats)
            rates[workers] = n / warm * 60
            per_cpu[workers] = cpu / n
            print(
                f"{workers} worker(s): {warm:.1f} s, {rates[workers]:.1f} series/min steady, "
                f"{cpu / warm:.2f} cores busy; {cold:.1f} s end to end with cluster start; "
                f"{load()}"
            )
            print(f"  per series (s): {per_series(rows)}; CPU {cpu / n:.2f} s", flush=True)
    efficiency = rates[2] / (2 * rates[1])
    print(f"parallel efficiency, 2 workers against 1: {efficiency:.2f}")
    print(
        f"CPU per series, 2 workers against 1: {per_cpu[2] / per_cpu[1]:.2f} "
        "(1.00: no extra work per series; efficiency below that is cores the workers did not get)"
    )
    print(f"2 workers against in-process: {rates[2] / (n / local * 60):.2f}x")


if __name__ == "__main__":
    main()
