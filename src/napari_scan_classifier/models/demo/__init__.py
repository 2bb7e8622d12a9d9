"""The bundled demo models' recipes: :mod:`.ct` (``demo_ct_lesion``) and :mod:`.mr`
(``demo_mr_brain``), sharing :mod:`.common`; ``python -m napari_scan_classifier.models.train_demo``
runs them."""
