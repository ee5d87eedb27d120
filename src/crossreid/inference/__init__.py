"""Inference: running a model over images.

* :func:`extract_features` (one process), :func:`extract_features_distributed` (``torchrun``)
  and :func:`extract_query_gallery`: images → re-ID feature vectors, in record order;
* :mod:`~crossreid.inference.engine`: the engine choice (``auto``, ``torch``, ``onnxruntime``);
  :mod:`~crossreid.inference.onnx_engine`: the ONNX export and its graph cache;
* :mod:`~crossreid.inference.runtime`: BatchNorm folding, eval mode and channels_last;
* :mod:`~crossreid.inference.camera_bn`: camera-wise BatchNorm statistics (test-time
  adaptation to a new camera network);
* :mod:`~crossreid.inference.images`: a folder of crops, or images named one by one, as records;
* :mod:`~crossreid.inference.features_file`: the ``.npz`` features file (its keys, reading and
  writing).

Evaluation, retrieval, training and the command line import this package; it imports none
of them.

Example::

    >>> from crossreid.inference import extract_features
    >>> feats = extract_features(model, dataset.query, batch_size=64)   # doctest: +SKIP
    >>> feats.features.shape                                            # doctest: +SKIP
    (3368, 2048)
"""

from crossreid.inference.camera_bn import kept_batchnorm_statistics, recalibrate_batchnorm
from crossreid.inference.engine import ENGINES, check_engine, feature_engine
from crossreid.inference.extraction import (
    ExtractedFeatures,
    extract_features,
    extract_features_camera_bn,
    extract_features_distributed,
    extract_query_gallery,
)
from crossreid.inference.features_file import (
    QUERY_GALLERY_KEYS,
    load_features_file,
    save_features_file,
)
from crossreid.inference.images import records_from_folder, records_from_paths
from crossreid.inference.runtime import fuse_batchnorm, inference_network

__all__ = [
    "ENGINES",
    "QUERY_GALLERY_KEYS",
    "ExtractedFeatures",
    "check_engine",
    "extract_features",
    "extract_features_camera_bn",
    "extract_features_distributed",
    "extract_query_gallery",
    "feature_engine",
    "fuse_batchnorm",
    "inference_network",
    "kept_batchnorm_statistics",
    "load_features_file",
    "recalibrate_batchnorm",
    "records_from_folder",
    "records_from_paths",
    "save_features_file",
]
