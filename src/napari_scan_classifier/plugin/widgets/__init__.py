"""Dock widgets contributed through ``napari.yaml``."""
