"""The case library: annotated, de-identified cases on disk, safe against crashes.

Layout of a library folder::

    <root>/<case_id>/case.json       label, prediction, timestamps, content hash, safe metadata
    <root>/<case_id>/volume.nii.gz   voxels and geometry (written by ``save_nifti``)
    <root>/<case_id>/mask.nii.gz     optional lesion mask on the same grid
    <root>/.incoming/                cases and files being written (ignored; stale ones cleaned)
    <root>/.trash/<case_id>/         deleted cases, recoverable with ``restore``
    <root>/.drafts/<hash>.npz        autosaved mask of a scan not yet saved as a case

There is no index: the case folders *are* the library, so nothing can disagree with them. A case is
written whole into ``.incoming/<id>``, fsynced, and renamed into place as the last step, so a crash
leaves either the complete case or nothing visible. The same rename makes ``relabel`` atomic.

Drafts keep a lesion mask while it is being painted, so a crash of the viewer before the case is
saved loses at most the last moments of painting. A draft is keyed by the scan's content hash (the
hash its case will get), holds nothing but the mask and that hash, and is removed when the case
is saved.

De-identification: a case keeps voxels, geometry, the label, the model's prediction and a few
numeric acquisition values. It never holds a DICOM header, a source path, patient fields or free
text from the scanner (series descriptions are typed by technologists and sometimes hold names or
accession numbers, so they are dropped). Case IDs are random, not derived from any UID.

Modules: ``record`` (folder layout, checked records), ``deidentify`` (what metadata is kept),
``voxels`` (storable voxels, masks, content hash), ``store`` (the folder and its atomic writes),
``drafts``, ``exchange`` (zip export/import) and ``library`` (:class:`CaseLibrary`, joining them).
"""

from napari_scan_classifier.cases.deidentify import case_metadata, clean_label
from napari_scan_classifier.cases.drafts import DRAFT_SUFFIX, DRAFTS
from napari_scan_classifier.cases.exchange import ImportResult
from napari_scan_classifier.cases.library import CaseLibrary
from napari_scan_classifier.cases.record import (
    CASE_FILE,
    FORMAT_VERSION,
    INCOMING,
    MASK_FILE,
    TRASH,
    VOLUME_FILE,
    CaseRecord,
    CorruptCase,
)
from napari_scan_classifier.cases.store import default_root
from napari_scan_classifier.cases.voxels import content_hash, scan_key

__all__ = [
    "CASE_FILE",
    "DRAFTS",
    "DRAFT_SUFFIX",
    "FORMAT_VERSION",
    "INCOMING",
    "MASK_FILE",
    "TRASH",
    "VOLUME_FILE",
    "CaseLibrary",
    "CaseRecord",
    "CorruptCase",
    "ImportResult",
    "case_metadata",
    "clean_label",
    "content_hash",
    "default_root",
    "scan_key",
]
