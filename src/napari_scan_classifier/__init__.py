"""napari-scan-classifier: classify CT/MRI scans with a CNN, explain, annotate and fine-tune."""

from napari_scan_classifier._tensorflow_isolation import isolate_tensorflow, quiet_tensorflow

quiet_tensorflow()
isolate_tensorflow()

from napari_scan_classifier.volume import Volume  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Volume", "__version__"]
