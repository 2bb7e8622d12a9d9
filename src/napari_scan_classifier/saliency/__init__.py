"""Where did the model look, and does the map tell the truth about it?

Every map is computed on the model grid, then resampled onto the *source* volume's grid (the
linear interpolation of :func:`~napari_scan_classifier.preprocess.to_source_grid`), so it
carries the scan's affine and lies exactly over the scan in napari or any other viewer. Values
are float32, normalised to 0..1 (1 at the most salient place), 0 outside the region the model
saw.

- ``maps``: Grad-CAM (any convolution block) and occlusion;
- ``gradients``: integrated gradients on the input;
- ``faithfulness``: region deletion and insertion with a plausible fill, one pass/fail;
- ``selection``: every method behind one call, and the most faithful one chosen per bundle;
- ``sanity``: the model-randomisation check.
"""

from napari_scan_classifier.saliency.core import SaliencyMap, Target
from napari_scan_classifier.saliency.faithfulness import (
    FAITHFUL_MARGIN,
    Faithfulness,
    measure_faithfulness,
)
from napari_scan_classifier.saliency.gradients import integrated_gradients
from napari_scan_classifier.saliency.maps import activation_layers, grad_cam, occlusion
from napari_scan_classifier.saliency.sanity import (
    RandomisationCheck,
    randomisation_check,
    randomised,
)
from napari_scan_classifier.saliency.selection import (
    FALLBACK_METHOD,
    METHODS,
    TITLES,
    SaliencyChoice,
    choose_saliency,
    default_method,
    method_key,
    replacement_candidates,
    saliency_map,
    with_saliency_choice,
)

__all__ = [
    "FAITHFUL_MARGIN",
    "FALLBACK_METHOD",
    "METHODS",
    "TITLES",
    "Faithfulness",
    "RandomisationCheck",
    "SaliencyChoice",
    "SaliencyMap",
    "Target",
    "activation_layers",
    "choose_saliency",
    "default_method",
    "grad_cam",
    "integrated_gradients",
    "measure_faithfulness",
    "method_key",
    "occlusion",
    "randomisation_check",
    "randomised",
    "replacement_candidates",
    "saliency_map",
    "with_saliency_choice",
]
