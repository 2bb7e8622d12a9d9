"""How well does the applicability check tell in-distribution scans from the rest?

In-distribution: held-out CT phantoms like the demo model's training data (clear lesions and
``make_cases``' subtle ones, seeds never used in training or for the threshold), in both training
fields of view. Out of distribution, one kind at a time:

- ``noise``: Gaussian noise around a soft-tissue mean, and uniform noise over the HU range;
- ``mr``: the T1 brain MR phantom (tagged MR), and ``mr_tagged_ct``: the same voxels tagged CT
  (an MR given to a CT model with a wrong header);
- ``head_ct``: the head CT phantom, and ``head_ct_no_header``: without its body-part field;
- ``fov``: body phantoms with a very different field of view: a 384 mm one and a 64 mm crop;
- ``metal``: streak artefacts from a metal implant across every slice;
- ``truncated``: the body cut off at the image edge (a field of view smaller than the body), or
  by a too-small reconstruction circle (air outside it);
- ``hu_scaling``: missing rescale intercept (+1024) or a wrong slope (x0.5, x2).

Every scan goes through ``inference.classify`` (the product path). Printed per kind: the AUROC
of the whole check (input checks first, then the feature score), of the feature score alone,
and, as the peers measured on the same scans, the energy score and the maximum softmax
probability from the logits; and the fraction flagged. Then the false-abstention rate on the
in-distribution scans. sklearn's ``roc_auc_score`` throughout.

    python benchmarks/bench_ood.py [--n 40] [--model BUNDLE]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Iterator

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.metrics import roc_auc_score

from napari_scan_classifier import phantoms
from napari_scan_classifier.applicability import check_reasons, summarise
from napari_scan_classifier.backend import device_name
from napari_scan_classifier.inference import classify
from napari_scan_classifier.models import Bundle
from napari_scan_classifier.models.train_demo import SPACING, clear_cases, make_cases
from napari_scan_classifier.results import resolve_bundle
from napari_scan_classifier.volume import Volume

SHAPES = ((64, 96, 96), (72, 128, 128))
SEED = 2024 + 50_000  # clear of every seed train_demo uses
Maker = Callable[[int, int], Iterator[Volume]]


def _ct(seed: int, shape: tuple[int, int, int] = (64, 96, 96)) -> Volume:
    return phantoms.make_ct_phantom(seed, shape, SPACING, None).volume


def _noise(n: int, seed: int) -> Iterator[Volume]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = SHAPES[i % 2]
        if i % 2:
            voxels = rng.uniform(-1024, 3071, shape)
        else:
            voxels = rng.normal(rng.uniform(-100, 100), rng.uniform(30, 300), shape)
        reference = _ct(seed + i, shape)
        yield reference.with_voxels(np.rint(voxels).astype(np.int16))


def _mr(n: int, seed: int, tag: str = "MR") -> Iterator[Volume]:
    for i in range(n):
        volume = phantoms.make_mr_phantom(seed + i).volume
        yield Volume(volume.voxels, volume.affine, tag, {"body_part": "HEAD"})


def _head(n: int, seed: int, header: bool = True) -> Iterator[Volume]:
    for i in range(n):
        volume = phantoms.make_head_ct_phantom(seed + i).volume
        metadata = {k: v for k, v in volume.metadata.items() if header or k != "body_part"}
        yield Volume(volume.voxels, volume.affine, "CT", metadata)


def _fov(n: int, seed: int) -> Iterator[Volume]:
    for i in range(n):
        if i % 2:
            yield _ct(seed + i, (64, 256, 256))  # 160 x 384 x 384 mm
        else:
            volume = _ct(seed + i, (72, 128, 128))
            crop = volume.voxels[24:48, 43:85, 43:85]  # 60 x 63 x 63 mm in the abdomen
            yield Volume(crop, volume.affine, "CT", dict(volume.metadata))


def _metal(n: int, seed: int) -> Iterator[Volume]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        volume = _ct(seed + i, SHAPES[i % 2])
        voxels = volume.voxels.astype(np.float32)
        _, rows, cols = voxels.shape
        y, x = np.mgrid[:rows, :cols]
        cy, cx = rows * rng.uniform(0.4, 0.6), cols * rng.uniform(0.4, 0.6)
        angle = np.arctan2(y - cy, x - cx)
        streaks = np.cos(angle * rng.integers(6, 14)) * rng.uniform(300, 800)
        fade = np.exp(-np.hypot(y - cy, x - cx) / (0.3 * cols))
        voxels += (streaks * fade)[None]
        voxels[:, np.hypot(y - cy, x - cx) < 3] = 3071
        yield volume.with_voxels(np.rint(np.clip(voxels, -1024, 3071)).astype(np.int16))


def _truncated(n: int, seed: int) -> Iterator[Volume]:
    """Alternately: the body larger than the field of view (the central 70 % kept in-plane),
    and a reconstruction circle smaller than the body (air outside it)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        volume = _ct(seed + i, SHAPES[(i // 2) % 2])
        voxels = volume.voxels.copy()
        _, rows, cols = voxels.shape
        if i % 2 == 0:
            r0, c0 = int(0.15 * rows), int(0.15 * cols)
            cropped = voxels[:, r0 : rows - r0, c0 : cols - c0]
            yield Volume(cropped, volume.affine, "CT", dict(volume.metadata))
            continue
        y, x = np.mgrid[:rows, :cols]
        radius = rng.uniform(0.25, 0.35) * cols
        voxels[:, np.hypot(y - rows / 2, x - cols / 2) > radius] = -1024
        yield volume.with_voxels(voxels)


def _hu_scaling(n: int, seed: int) -> Iterator[Volume]:
    for i in range(n):
        volume = _ct(seed + i, SHAPES[i % 2])
        hu = volume.voxels.astype(np.float32)
        scaled = (hu + 1024, hu * 0.5, hu * 2.0)[i % 3]
        yield volume.with_voxels(np.rint(scaled).astype(np.int16))


KINDS: dict[str, Maker] = {
    "noise": _noise,
    "mr": _mr,
    "mr_tagged_ct": lambda n, seed: _mr(n, seed, "CT"),
    "head_ct": _head,
    "head_ct_no_header": lambda n, seed: _head(n, seed, header=False),
    "fov": _fov,
    "metal": _metal,
    "truncated": _truncated,
    "hu_scaling": _hu_scaling,
}


def in_distribution(n: int) -> Iterator[Volume]:
    for volume, _label in clear_cases(n, SEED, SHAPES):
        yield volume
    for volume, _label in make_cases(n // 2, SEED + 1, SHAPES):
        yield volume


def measure(volumes: Iterator[Volume], bundle: Bundle) -> dict[str, np.ndarray]:
    """Per scan: whole-check score, feature score, energy, 1 - max softmax, flagged, checks."""
    rows = []
    checks = bundle.metadata.applicability["checks"]
    batch: list[Volume] = []
    for volume in [*volumes, None]:
        if volume is not None:
            batch.append(volume)
        if batch and (volume is None or len(batch) == 8):
            for scan, p in zip(batch, classify(batch, bundle, method="none"), strict=True):
                failed = bool(check_reasons(summarise(scan), checks))
                relative = p.ood.score / p.ood.threshold
                t = bundle.metadata.temperature
                rows.append(
                    (
                        relative + (10.0 if failed else 0.0),
                        relative,
                        -t * logsumexp(p.logits / t),
                        1.0 - softmax(p.logits / t).max(),
                        not p.ood.in_distribution,
                        failed,
                    )
                )
            batch = []
    names = ("whole", "feature", "energy", "msp", "flagged", "checks")
    return {name: np.array([row[k] for row in rows]) for k, name in enumerate(names)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="scans per out-of-distribution kind")
    parser.add_argument("--in-dist", type=int, default=100, help="held-out clear phantoms")
    parser.add_argument("--model", default=None, help="bundle (default: the shipped one)")
    args = parser.parse_args()
    bundle = resolve_bundle(args.model)
    info = bundle.metadata.applicability["detector"]
    print(f"{platform.processor() or platform.machine()}, {device_name()}")
    print(
        f"model {bundle.metadata.name} v{bundle.metadata.version}: {info['kind']} on "
        f"{info['features']} features, threshold {info['threshold']:.3f} "
        f"({info['false_abstention_rate']:.0%} target false abstention)"
    )
    start = time.perf_counter()
    ref = measure(in_distribution(args.in_dist), bundle)
    print(
        f"in distribution: {len(ref['flagged'])} held-out phantoms, false abstention "
        f"{ref['flagged'].mean():.1%} (input checks {ref['checks'].mean():.1%})"
    )
    header = f"{'kind':<18} {'n':>3} {'whole':>6} {'feature':>7} {'energy':>6} {'msp':>6} flagged"
    print(header)
    for index, (kind, make) in enumerate(KINDS.items()):
        out = measure(make(args.n, SEED + 1000 * (index + 2)), bundle)
        labels = np.r_[np.zeros(len(ref["whole"])), np.ones(len(out["whole"]))]
        auc = {
            key: roc_auc_score(labels, np.r_[ref[key], out[key]])
            for key in ("whole", "feature", "energy", "msp")
        }
        print(
            f"{kind:<18} {len(out['whole']):>3} {auc['whole']:6.3f} {auc['feature']:7.3f} "
            f"{auc['energy']:6.3f} {auc['msp']:6.3f} {out['flagged'].mean():6.1%}",
            flush=True,
        )
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
