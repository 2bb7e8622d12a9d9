"""Models: network architectures and the bundle format that ships them with their metadata."""

from napari_scan_classifier.models.architectures import (
    ARCHITECTURES,
    GRADCAM_LAYER,
    MCDropout,
    build_cnn3d,
    build_slice_gru,
    with_mc_dropout,
)
from napari_scan_classifier.models.bundle import (
    Bundle,
    BundleExistsError,
    BundleMetadata,
    check_model,
    derive,
    load_bundle,
    next_version,
    save_bundle,
    save_bundle_zip,
)

__all__ = [
    "ARCHITECTURES",
    "GRADCAM_LAYER",
    "Bundle",
    "BundleExistsError",
    "BundleMetadata",
    "MCDropout",
    "build_cnn3d",
    "build_slice_gru",
    "check_model",
    "derive",
    "load_bundle",
    "next_version",
    "save_bundle",
    "save_bundle_zip",
    "with_mc_dropout",
]
