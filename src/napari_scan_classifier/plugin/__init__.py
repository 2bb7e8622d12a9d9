"""The napari face of the package: the only place that imports napari, magicgui or Qt.

Everything here is thin: it turns core objects (:class:`~napari_scan_classifier.volume.Volume`,
load results, errors) into napari layers and notifications, and back.
"""
