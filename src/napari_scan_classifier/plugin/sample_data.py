"""npe2 sample data: a phantom CT series (DICOM) and a phantom MR volume (NIfTI).

They are opened through the same reader as the user's files, so the sample shows exactly what a
real load does. A checkout has them in ``sample_data/``; an installed wheel does not, so they are
generated once (deterministically, by the core's phantom generator) into the user cache.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import platformdirs
from napari.types import FullLayerData

from napari_scan_classifier import __version__
from napari_scan_classifier.phantoms import write_sample_data
from napari_scan_classifier.plugin.reader import read_scans

_CHECKOUT_SAMPLES = Path(__file__).resolve().parents[3] / "sample_data"
# The names ``phantoms.write_sample_data`` writes.
CT_SAMPLE = "ct_phantom"
MR_SAMPLE = "mr_phantom.nii.gz"


def sample_ct() -> list[FullLayerData]:
    """The phantom CT series (DICOM folder)."""
    return read_scans(str(sample_dir() / CT_SAMPLE))


def sample_mr() -> list[FullLayerData]:
    """The phantom MR volume (NIfTI)."""
    return read_scans(str(sample_dir() / MR_SAMPLE))


def sample_dir() -> Path:
    """The checkout's ``sample_data/`` if there is one, else a generated copy in the user cache."""
    if (_CHECKOUT_SAMPLES / CT_SAMPLE).is_dir() and (_CHECKOUT_SAMPLES / MR_SAMPLE).is_file():
        return _CHECKOUT_SAMPLES
    cache = Path(platformdirs.user_cache_dir("napari-scan-classifier")) / f"samples-{__version__}"
    if not cache.is_dir():
        _generate(cache)
    return cache


def _generate(target: Path) -> None:
    """Write into a scratch folder and rename it into place, so a crash never leaves half a set."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        write_sample_data(scratch)
        scratch.rename(target)
    except OSError:  # another viewer may have generated it at the same time
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
