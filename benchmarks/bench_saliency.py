"""Saliency on the sample CT with the shipped demo model: time, faithfulness and localisation of
every method, on this machine.

For Grad-CAM on each convolution block, integrated gradients and occlusion (20 mm patches):
the median time of the map over the runs (after one warm-up), the time of its faithfulness
check (region deletion and insertion), the check's areas and verdict, and the map's mean inside
the phantom's lesions over its mean elsewhere in the body. The peer for the time ratio is
Grad-CAM on the bundle's own layer, timed in the same runs.

    python benchmarks/bench_saliency.py [--runs 3] [--no-occlusion]
"""

from __future__ import annotations

import argparse
import statistics
import time

from napari_scan_classifier.backend import device_name
from napari_scan_classifier.models.bundled import load_default_bundle
from napari_scan_classifier.phantoms import sample_ct_phantom
from napari_scan_classifier.saliency import activation_layers, measure_faithfulness, saliency_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-occlusion", action="store_true", help="skip the slowest method")
    args = parser.parse_args()
    bundle = load_default_bundle()
    phantom = sample_ct_phantom()
    volume = phantom.volume
    lesions = phantom.lesion_mask.astype(bool)
    body = (phantom.tissues > 0) & ~lesions
    m = bundle.metadata
    layers = [m.gradcam_layer] + [n for n in activation_layers(bundle) if n != m.gradcam_layer]
    candidates = [("gradcam", layer) for layer in layers]  # the peer first
    candidates.append(("integrated_gradients", None))
    if not args.no_occlusion:
        candidates.append(("occlusion", None))
    print(f"{m.name} v{m.version} on {device_name()}; sample CT {volume.shape}, {args.runs} runs")
    peer = float("nan")
    for method, layer in candidates:
        seconds, result = [], None
        for _ in range(args.runs + 1):
            start = time.perf_counter()
            result = saliency_map(volume, bundle, method, "lesion", layer=layer)
            seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        check = measure_faithfulness(volume, bundle, result)
        checking = time.perf_counter() - start
        median = statistics.median(seconds[1:])
        if method == "gradcam" and layer == m.gradcam_layer:
            peer = median
        contrast = result.values[lesions].mean() / max(result.values[body].mean(), 1e-12)
        ratio = f"{median / peer:5.1f}x"
        print(
            f"{method:>20} {layer or '':<15} map {median:6.2f} s ({ratio} Grad-CAM "
            f"{m.gradcam_layer}), check {checking:5.2f} s: deletion {check.auc_deletion:.3f} "
            f"insertion {check.auc_insertion:.3f} random {check.auc_random:.3f} gap "
            f"{check.gap:+.3f} {'pass' if check.passed else 'FAIL'}; lesions/body {contrast:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
