"""Train a scan classifier from scratch or fine-tune a bundle; the result is a new bundle version.

One pipeline serves the command line, the napari widget and the bundled demo model:

1. **Data**: a case library folder or a MedMNIST-style ``.npz`` (see :mod:`.datasets`), put on
   the model's grid with the model's intensity recipe. The validation cases are the source's own
   ``val`` split when it has one, else a stratified split (``validation_fraction``), so every class
   is represented; each class needs at least two validation cases and one training case.
2. **Model**: the base bundle's network is *copied* (the base, on disk and in memory, is never
   changed). When the data bring classes the base does not know, the output layers are rebuilt for
   the union of classes (old classes first, in their old order), keeping every other weight and the
   old classes' output weights; the result says so in its ``notes``.
3. **Class imbalance**: ``"class_weight"`` weights each case's loss by
   ``sklearn.utils.class_weight.compute_class_weight("balanced")``; ``"balanced_sampling"`` draws
   every epoch's cases with replacement so each class is drawn equally often; ``"none"``.
4. **Augmentation** on the fly in NumPy/SciPy, kept anatomically plausible: a left-right flip
   (never superior-inferior or anterior-posterior: anatomy is not symmetric that way), a rotation
   of up to 10 degrees in the axial plane with an isotropic scaling of up to 10 %, an intensity
   scale/shift and Gaussian noise, all scaled by ``augment_strength``; for MR (no absolute unit)
   also a smooth multiplicative bias field and a global gain, normalised again by the model's
   recipe. Each case knows which of its axes is left-right and superior-inferior (from its
   affine), whatever the acquisition plane.
5. **Early stopping** on validation AUC (validation loss breaks ties), restoring the best epoch's
   weights; then a **temperature and a bias per class** are fitted on the validation logits
   (:mod:`.calibration`): they bring the probabilities back to the training data's class
   frequencies, which class weighting had moved, so the most probable class is the Bayes
   decision. The decision rule (that, or a threshold for a target sensitivity) goes into the
   bundle with the calibration.
6. **Evaluation** on the validation cases (AUC, accuracy at the decision rule, sensitivity,
   specificity, ECE before and after calibration, the majority-class rate; the base model's
   figures on the same cases when fine-tuning), written into ``bundle.json`` with the history,
   and the plots saved as PNG inside the bundle folder. The calibration is fitted on the same
   cases it is judged on, so the calibrated ECE is optimistic.

Nothing is written until training has finished: the bundle and its plots are published in one
atomic step by :func:`~.models.bundle.save_bundle`, so a cancelled or crashed run leaves no half
bundle. Versions are never overwritten: a new bundle takes the next free version number.

Progress and cancelling
-----------------------
``progress`` receives a :class:`TrainingEvent` as cases load, after every batch and after every
epoch. ``cancel`` (a ``threading.Event`` or a function returning True) is checked after every
batch: training stops at the end of the batch during which it was set, and :func:`train` raises
:class:`~.errors.CancelledError`.

Several GPUs
------------
When more than one GPU is visible, training runs data-parallel with no change for the user: each
batch is split across the GPUs and gradients are summed. :func:`data_parallel` holds the
backend-specific part: ``tf.distribute.MirroredStrategy`` on TensorFlow (the model is built,
compiled and fitted in its scope), ``keras.distribution.DataParallel`` on JAX; PyTorch trains on
one device. ``TrainingConfig.devices`` names devices explicitly (the tests use two logical CPUs).
The only other TensorFlow-specific lines feed each epoch through a ``tf.data`` pipeline with
autotuning off (:func:`.fit.fit_epoch` says why).

Modules
-------
:mod:`.config` settings and progress events; :mod:`.data` recipe, loading, classes and split;
:mod:`.augment`; :mod:`.model` building, copying and running the network; :mod:`.fit` epochs,
early stopping, BatchNorm refresh; :mod:`.calibration` temperature, class bias, decision rule;
:mod:`.record` what goes into the new bundle; :mod:`.pipeline` :func:`train`,
:func:`evaluate_bundle` and :func:`recalibrate_bundle` end to end.
"""

from __future__ import annotations

from napari_scan_classifier.training.augment import augment
from napari_scan_classifier.training.config import (
    DEFAULT_INTENSITY,
    IMBALANCE_METHODS,
    MIN_VALIDATION_PER_CLASS,
    TrainingConfig,
    TrainingEvent,
)
from napari_scan_classifier.training.fit import refresh_batchnorm
from napari_scan_classifier.training.model import data_parallel
from napari_scan_classifier.training.pipeline import (
    TrainingResult,
    evaluate_bundle,
    recalibrate_bundle,
    train,
)

__all__ = [
    "DEFAULT_INTENSITY",
    "IMBALANCE_METHODS",
    "MIN_VALIDATION_PER_CLASS",
    "TrainingConfig",
    "TrainingEvent",
    "TrainingResult",
    "augment",
    "data_parallel",
    "evaluate_bundle",
    "recalibrate_bundle",
    "refresh_batchnorm",
    "train",
]
