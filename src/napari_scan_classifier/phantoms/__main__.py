"""``python -m napari_scan_classifier.phantoms --out DIR`` writes the sample data."""

from napari_scan_classifier.phantoms.samples import main

main()
