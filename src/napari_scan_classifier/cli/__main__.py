"""``python -m napari_scan_classifier.cli``: the same as the ``napari-scan-classifier`` command."""

import sys

from napari_scan_classifier.cli.entry import main

sys.exit(main())
