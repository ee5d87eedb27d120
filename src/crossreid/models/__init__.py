"""The cross-domain re-ID network, its building blocks and its checkpoint format.

``CrossDomainReID`` is the model (identity encoder, pose encoder, decoder, classifier);
``load_checkpoint(path)`` rebuilds one from a checkpoint file (or run folder) alone;
``soup_checkpoint(paths)`` averages the weights of runs trained from one start.
"""

from crossreid.models.backbones import BACKBONES, build_trunk, imagenet_state_dict
from crossreid.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    build_checkpoint,
    find_checkpoint,
    link_checkpoint,
    load_checkpoint,
    load_model_state,
    load_partial,
    read_checkpoint,
    save_checkpoint,
)
from crossreid.models.decoder import Decoder
from crossreid.models.network import CrossDomainReID, IdentityEncoder, PoseEncoder
from crossreid.models.pooling import POOLINGS, GeneralizedMeanPooling
from crossreid.models.soup import average_state_dicts, soup_checkpoint

__all__ = [
    "BACKBONES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "POOLINGS",
    "CrossDomainReID",
    "Decoder",
    "GeneralizedMeanPooling",
    "IdentityEncoder",
    "PoseEncoder",
    "average_state_dicts",
    "build_checkpoint",
    "build_trunk",
    "find_checkpoint",
    "imagenet_state_dict",
    "load_checkpoint",
    "load_model_state",
    "load_partial",
    "read_checkpoint",
    "link_checkpoint",
    "save_checkpoint",
    "soup_checkpoint",
]
