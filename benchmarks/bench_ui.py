"""The largest event-loop stall a user feels in a real napari window, for three jobs.

A QTimer ticks every 10 ms in the Qt thread; a stall is the longest gap between two ticks (less
the 10 ms period). Measured in one napari window (under Xvfb when there is no display):

- open: opening a 512x512x300 CT series (one DICOM file per slice, written by the package's
  DICOM writer), until 1 s after its layer appeared: through the Display dock (read in a
  worker; first, so it also pays napari's first use of units) and through napari's File > Open
  (the plugin's reader, in the Qt thread);
- classify+show: classifying it in the Classify dock with the bundled model and a checked
  Grad-CAM map, until 3 s after every result layer is shown; then "classify again", the same
  once more (layers updated in place): the first use pays one-time costs (software OpenGL's
  shader compilation for new layers, the text overlay's glyphs), every later one does not;
- scroll: then 20 steps of the slice slider, one every 50 ms, with the results shown (the
  scan, its map, the text on the canvas and the dock's chart follow the slider);
- train epoch: one training epoch in the Train dock (the bundled model fine-tuned on 12
  phantom cases), until 3 s after its results are shown.

Peers, in the same run: the largest gap of the idle window over 2 s (the floor that the display
and the machine's load give), and napari's own stalls in a fresh window of its own (a separate
process, so it pays the same first-use costs): adding the scan's array as the window's first
layer, adding a map like the saliency layer after it, and the first text on the canvas. Our jobs
do at least that much napari work, so those are the floor this machine allows. Target: no stall
over 50 ms.

    python benchmarks/bench_ui.py [--slices 300] [--size 512] [--skip open,classify,train]
                                  [--profile] [--where] [--no-peers]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TICK_MS = 10
SCROLL_STEPS = 20
TARGET_MS = 50.0
PLUGIN = "napari-scan-classifier"


def make_series(folder: Path, slices: int, size: int) -> Path:
    """An axial CT series (HU; body, organs of another density, noise), written once."""
    from napari_scan_classifier.io.dicom_write import write_series
    from napari_scan_classifier.volume import Volume, lps_to_world

    if len(list(folder.glob("*.dcm"))) == slices:
        return folder
    rng = np.random.default_rng(0)
    y, x = np.ogrid[:size, :size]
    body = ((y - size / 2) / (0.35 * size)) ** 2 + ((x - size / 2) / (0.45 * size)) ** 2 <= 1
    organ = ((y - size / 2) / (0.15 * size)) ** 2 + ((x - size / 3) / (0.12 * size)) ** 2 <= 1
    hu = rng.integers(-20, 21, size=(slices, size, size), dtype=np.int16)
    hu[:, body] += 40
    hu[:, organ] += 30
    hu[:, ~body] -= 1000
    lps = np.array([[0.7, 0, 0, -180], [0, 0.7, 0, -180], [0, 0, 1.0, -150], [0, 0, 0, 1]])
    volume = Volume(hu, lps_to_world(lps[:, [2, 1, 0, 3]]), modality="CT")
    write_series(volume, folder, series_description="Benchmark CT", window=(40.0, 400.0))
    return folder


def make_library(root: Path) -> Path:
    """Twelve small (48^3) phantom cases, six with lesions."""
    from napari_scan_classifier.cases import CaseLibrary
    from napari_scan_classifier.phantoms import make_case

    library = CaseLibrary(root)
    if len(library.list()) < 12:
        for seed in range(12):
            library.add(
                make_case(seed, seed % 2, shape=(48, 48, 48)).volume, ("normal", "lesion")[seed % 2]
            )
    return root


class StallMeter:
    """Ticks of a 10 ms QTimer in the Qt thread; the largest gap over a stretch of time."""

    def __init__(self, profile: bool = False) -> None:
        from qtpy.QtCore import QTimer

        self.profile = profile
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(self.timer.timerType().PreciseTimer)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start(TICK_MS)

    def measure(
        self, start: Callable[[], object], done: Callable[[], bool], after_s: float
    ) -> float:
        """Run ``start`` from the event loop, wait until ``done()``, then ``after_s`` more;
        returns the largest stall in ms (a tick gap less the tick period)."""
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        profiler = cProfile.Profile() if self.profile else None
        if profiler is not None:
            profiler.enable()  # the Qt thread only: where stalls come from
        self.ticks.clear()
        began = time.perf_counter()
        QTimer.singleShot(0, start)
        finished: float | None = None
        while True:
            app.processEvents()
            time.sleep(0.001)
            now = time.perf_counter()
            if finished is None and now - began > 0.05 and done():
                finished = now
            if finished is not None and now - finished > after_s:
                break
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
        ticks = [began, *self.ticks, time.perf_counter()]
        return max(0.0, 1000 * float(np.diff(ticks).max()) - TICK_MS)


def report_stalls(meter: StallMeter, stop: threading.Event, over_s: float = 0.15) -> None:
    """From a watchdog thread (until ``stop``), print the Qt thread's stack whenever it has not
    ticked for ``over_s``: what the viewer was busy with while frozen."""
    main = threading.main_thread().ident

    def watch() -> None:
        reported = 0.0
        while not stop.wait(0.02):
            now = time.perf_counter()
            if not meter.ticks or now - meter.ticks[-1] < over_s or now - reported < 0.3:
                continue
            reported = now
            stack = traceback.extract_stack(sys._current_frames()[main])[-12:]
            where = " <- ".join(
                f"{f.name} ({Path(f.filename).name}:{f.lineno})" for f in stack[::-1]
            )
            print(f"stall {1000 * (now - meter.ticks[-1]):.0f} ms: {where}", flush=True)

    threading.Thread(target=watch, daemon=True).start()


def scroll(viewer: Any, steps: int = SCROLL_STEPS, every_ms: int = 50) -> None:
    """Step the slider from the middle slice, one slice every ``every_ms``, as a user
    scrolls (scheduled: the event loop runs between steps)."""
    from qtpy.QtCore import QTimer

    first = viewer.dims.current_step[0]
    for k in range(1, steps + 1):
        QTimer.singleShot(k * every_ms, lambda k=k: viewer.dims.set_current_step(0, first + k))


def napari_peers(args: argparse.Namespace) -> dict[str, float]:
    """napari's own largest stalls in a fresh window: the scan's array as its first layer, a
    map on a coarser grid (colormap, additive) after it, and the first text on the canvas."""
    import napari

    viewer = napari.Viewer(title="bench_ui peer")
    meter = StallMeter()
    meter.measure(lambda: None, lambda: True, 2.0)
    rng = np.random.default_rng(0)
    scan = rng.integers(-1000, 200, (args.slices, args.size, args.size), dtype=np.int16)
    saliency = rng.random((args.slices // 4, args.size // 4, args.size // 4), dtype=np.float32)
    figures = {}
    for name, add in (
        ("first layer", lambda: viewer.add_image(scan, contrast_limits=(-1000, 200))),
        ("map layer", lambda: viewer.add_image(saliency, colormap="inferno", blending="additive")),
    ):
        count = len(viewer.layers)
        figures[name] = meter.measure(add, lambda c=count: len(viewer.layers) > c, 1.0)
    canvas = getattr(viewer, "canvas", None)  # napari 0.9; text_overlay before
    overlay = canvas.overlays.text if canvas is not None else viewer.text_overlay
    figures["first text"] = meter.measure(
        lambda: overlay.update({"visible": True, "text": "Predicted: lesion (p = 0.97)"}),
        lambda: True,
        1.0,
    )
    viewer.close()
    return figures


def measure_peers(args: argparse.Namespace) -> dict[str, float]:
    """:func:`napari_peers` in a process of its own (this one has paid napari's first uses)."""
    command = [sys.executable, __file__, "--napari-peers"]
    command += ["--slices", str(args.slices), "--size", str(args.size)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> None:
    import napari

    from napari_scan_classifier.plugin.widgets.classify import ClassifyWidget
    from napari_scan_classifier.plugin.widgets.display import DisplayWidget
    from napari_scan_classifier.plugin.widgets.train import TrainWidget

    cache = Path(tempfile.gettempdir()) / "napari-scan-classifier-bench-ui"
    series = make_series(cache / f"ct-{args.slices}x{args.size}", args.slices, args.size)
    viewer = napari.Viewer(title="bench_ui")
    classify = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(classify, name="Classify scan", area="right")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train model", area="right", tabify=True)
    meter = StallMeter(args.profile)
    stop = threading.Event()
    if args.where:
        report_stalls(meter, stop)
    meter.measure(lambda: None, lambda: True, 2.0)  # the window settles (first paint, GL)
    figures: dict[str, float] = {}
    figures["idle (peer)"] = meter.measure(lambda: None, lambda: True, 2.0)
    if "open" not in args.skip:
        display = DisplayWidget(viewer)
        viewer.window.add_dock_widget(display, name="Display", area="right", tabify=True)
        opened: list[object] = []
        figures["open (dock)"] = meter.measure(
            lambda: opened.append(display.open(series)),
            lambda: bool(opened) and display.worker is None and len(viewer.layers) > 0,
            1.0,
        )
        figures["open (reader)"] = meter.measure(
            lambda: viewer.open(str(series), plugin=PLUGIN), lambda: len(viewer.layers) > 1, 1.0
        )
        viewer.layers.pop()
    else:
        viewer.open(str(series), plugin=PLUGIN)
    if "classify" not in args.skip:
        classify.scan.value = viewer.layers[0]
        started: list[object] = []
        for name in ("classify+show", "classify again"):
            started.clear()
            figures[name] = meter.measure(
                lambda: started.append(classify.classify()),
                lambda: bool(started) and classify.worker is None,
                3.0,
            )
        figures["scroll"] = meter.measure(lambda: scroll(viewer), lambda: True, 1.5)
    if "train" not in args.skip:
        train.library.value = make_library(cache / "cases-48")
        train.out.value = Path(tempfile.mkdtemp(prefix="bench-ui-models-"))
        train.epochs.value = 1
        train.batch_size.value = 4
        train.validation.value = 0.35
        started_train: list[object] = []
        figures["train epoch"] = meter.measure(
            lambda: started_train.append(train.start()),
            lambda: bool(started_train) and train.worker is None,
            3.0,
        )
    stop.set()
    viewer.close()
    peer = figures["idle (peer)"]
    print(
        f"largest event-loop stall ({TICK_MS} ms timer), {args.slices}x{args.size}x{args.size} CT"
    )
    for name, ms in figures.items():
        ratio = ms / max(peer, 1.0)
        print(f"  {name:<15} {ms:7.0f} ms   {ms / TARGET_MS:5.1f} x target   {ratio:5.1f} x idle")
    if not args.no_peers:
        print("napari alone, in a fresh window (the floor of the jobs above)")
        for name, ms in measure_peers(args).items():
            print(f"  {name:<15} {ms:7.0f} ms   {ms / TARGET_MS:5.1f} x target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--skip", default="", help="comma-separated: open, classify, train")
    parser.add_argument("--profile", action="store_true", help="profile the Qt thread")
    parser.add_argument(
        "--where", action="store_true", help="print the Qt thread's stack in stalls"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip napari's own stalls")
    parser.add_argument("--napari-peers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    job = (lambda a: print(json.dumps(napari_peers(a)))) if args.napari_peers else run
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        with Display(visible=False, size=(1920, 1080)):
            os.environ["QT_QPA_PLATFORM"] = "xcb"
            job(args)
    else:
        job(args)


if __name__ == "__main__":
    main()
