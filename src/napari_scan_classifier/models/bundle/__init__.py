"""Model bundles: a Keras model plus everything needed to use it correctly, validated on load.

A bundle is a folder (or the same two files in one ``.zip``)::

    model.keras   the network (Keras 3 format), outputs a dict of logits, see architectures.py
    bundle.json   BundleMetadata: classes, modality, input grid, intensity recipe, calibration,
                  applicability ranges, metrics, lineage, and the SHA-256 of every other
                  file of the bundle
    applicability.npz   the feature detector of :mod:`~napari_scan_classifier.applicability`,
                  present when ``bundle.json``'s ``applicability`` names one
    *.png, ...    optional extra files (training plots), published with the model

Bundles are immutable: saving never overwrites (a new model is a new version, made with
:func:`derive`), and a save writes into a temporary sibling and renames it into place, so a crash
leaves either the whole bundle or none of it.

Loading never runs code from the file: ``model.keras``'s config is checked first for Lambda layers
and for references to Python modules outside Keras and this package, then Keras loads it in
safe mode.

Integrity: saving records the SHA-256 of every file of the bundle but ``bundle.json`` itself in
its ``files`` field, and loading refuses a bundle whose files do not match (flipped bytes in the
weights change every answer and would otherwise load without complaint). This catches damage and
edits after saving, not a forger who rewrites ``bundle.json`` too. Bundles saved before hashes
were recorded (no ``files``) load unchecked.
"""

from napari_scan_classifier.models.bundle.constants import (
    BYTES_PER_GRID_VOXEL,
    DETECTOR_FILE,
    FORMAT_VERSION,
    MAX_KERAS_CONFIG_BYTES,
    MAX_METADATA_BYTES,
    METADATA_FILE,
    MODALITIES,
    MODEL_FILE,
    REGIONS,
    TASKS,
    TRUSTED_MODULES,
)
from napari_scan_classifier.models.bundle.integrity import (
    verify_files,
)
from napari_scan_classifier.models.bundle.loading import (
    load_bundle,
    read_metadata,
)
from napari_scan_classifier.models.bundle.metadata import (
    Bundle,
    BundleMetadata,
    calibrated,
    derive,
    next_version,
)
from napari_scan_classifier.models.bundle.saving import (
    BundleExistsError,
    save_bundle,
    save_bundle_zip,
    write_metadata,
)
from napari_scan_classifier.models.bundle.validation import (
    check_detector,
    check_model,
)

__all__ = [
    "BYTES_PER_GRID_VOXEL",
    "DETECTOR_FILE",
    "FORMAT_VERSION",
    "MAX_KERAS_CONFIG_BYTES",
    "MAX_METADATA_BYTES",
    "METADATA_FILE",
    "MODALITIES",
    "MODEL_FILE",
    "REGIONS",
    "TASKS",
    "TRUSTED_MODULES",
    "Bundle",
    "BundleExistsError",
    "BundleMetadata",
    "calibrated",
    "check_detector",
    "check_model",
    "derive",
    "load_bundle",
    "next_version",
    "read_metadata",
    "save_bundle",
    "save_bundle_zip",
    "verify_files",
    "write_metadata",
]
