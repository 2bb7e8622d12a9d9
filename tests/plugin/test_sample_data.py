"""Sample data: the checkout's sample_data/ when present, else generated once into the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_scan_classifier import samples
from napari_scan_classifier.plugin import sample_data

PLUGIN = "napari-scan-classifier"


@pytest.fixture
def no_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Behave like an installed wheel: no sample_data/ next to the package; cache under tmp."""
    monkeypatch.setattr(samples, "_CHECKOUT_SAMPLES", tmp_path / "no-checkout")
    monkeypatch.setattr(samples.platformdirs, "user_cache_dir", lambda *_: str(tmp_path))
    return tmp_path


def test_samples_are_generated_once_into_the_cache(viewer: ViewerModel, no_checkout: Path) -> None:
    (ct,) = viewer.open_sample(PLUGIN, "phantom_ct")
    (mr,) = viewer.open_sample(PLUGIN, "phantom_mr")
    (infarct,) = viewer.open_sample(PLUGIN, "phantom_mr_infarct")

    assert ct.name == "CT #1 Synthetic CT phantom"
    assert tuple(ct.contrast_limits) == (-160.0, 240.0)  # the series' stored soft-tissue window
    assert mr.metadata["modality"] == infarct.metadata["modality"] == "MR"
    assert mr.data.shape == infarct.data.shape == (36, 128, 128)
    assert not np.array_equal(mr.data, infarct.data)
    folder = samples.sample_dir()
    assert folder.parent == no_checkout
    stamp = (folder / samples.MR_SAMPLE).stat().st_mtime_ns
    again = sample_data.sample_mr()
    assert (folder / samples.MR_SAMPLE).stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again[0][0], mr.data)


def test_checkout_samples_are_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = tmp_path / "sample_data"
    (checkout / samples.CT_SAMPLE).mkdir(parents=True)
    (checkout / samples.MR_SAMPLE).touch()
    (checkout / samples.MR_INFARCT_SAMPLE).touch()
    monkeypatch.setattr(samples, "_CHECKOUT_SAMPLES", checkout)

    assert samples.sample_dir() == checkout


def test_a_cache_without_the_infarct_sample_is_written_again(no_checkout: Path) -> None:
    stale = no_checkout / f"samples-{samples.__version__}"
    (stale / samples.CT_SAMPLE).mkdir(parents=True)
    (stale / samples.MR_SAMPLE).touch()

    assert samples.sample_dir() == stale
    assert (stale / samples.MR_INFARCT_SAMPLE).stat().st_size > 100_000
    assert (stale / samples.MR_SAMPLE).stat().st_size > 100_000
