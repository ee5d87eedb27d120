"""The training configuration: one dataclass of plain data, YAML loading and validation.

Every choice of a training run is a field of :class:`TrainConfig`. The same field names are
the keys of a YAML config file (``max_steps: 3000`` or ``max-steps: 3000``), the
``crossreid train`` flags (``--max-steps``) and the ``reid_main.py`` flags
(``--max_steps``). Precedence: dataclass defaults < YAML file < command-line flags.

Example::

    >>> cfg = TrainConfig(source="synthetic:A", target="synthetic:B", backbone="resnet18",
    ...                   pretrained="none", image_size=(128, 64), max_steps=100)
    >>> cfg.validate()
    >>> cfg.to_dict()["image_size"]
    [128, 64]
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossreid.errors import ConfigError
from crossreid.evaluation.distance import METRICS as DIST_METRICS
from crossreid.training import terms

__all__ = [
    "MODES",
    "TrainConfig",
    "build_config",
    "config_fields",
    "load_config_file",
    "parse_image_size",
]

#: Training modes. ``adapt``: labelled source + unlabelled target (the method).
#: ``source-only``: source losses only, no target batches (the lower bound).
#: ``oracle``: supervised on the *target's* training labels (the upper bound).
MODES = ("adapt", "source-only", "oracle")
BACKBONE_CHOICES = ("resnet18", "resnet34", "resnet50", "resnet101")
#: crossreid.models.pooling.POOLINGS (not imported: the configuration stays free of torch).
POOLING_CHOICES = ("max", "gem")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
REC_LOSSES = ("l1", "l2")


def _f(default: Any, help: str, group: str, **extra: Any) -> Any:
    """A dataclass field carrying its help text and its group (for the CLI and docs)."""
    meta = {"help": help, "group": group, **extra}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run needs, as plain data (picklable, YAML-able, no objects)."""

    # -- data ------------------------------------------------------------------------------
    source: str | None = _f(
        None, "labelled source dataset spec (NAME, folder:PATH or synthetic:DOMAIN)", "data"
    )
    target: str | None = _f(
        None,
        "unlabelled target dataset spec; evaluation runs on its query/gallery "
        "(without it: on the source's)",
        "data",
    )
    data_root: str | None = _f(None, "folder holding the named datasets", "data")
    output: str = _f("runs/crossreid", "run folder for logs, metrics and checkpoints", "data")
    mode: str = _f(
        "adapt",
        "adapt (source labels + unlabelled target), source-only (no target batches, no MMD) "
        "or oracle (supervised on the target's training labels)",
        "data",
        choices=MODES,
    )
    method: str = _f(
        "arn",
        "arn (alignment: source labels, unlabelled target batches) or cluster (pseudo-label "
        "self-training on the target; start it from an ARN run with --init-from)",
        "data",
        choices=terms.METHODS,
    )
    # -- model -----------------------------------------------------------------------------
    backbone: str = _f(
        "resnet50", "ResNet trunk of both encoders", "model", choices=BACKBONE_CHOICES
    )
    pretrained: str = _f(
        "imagenet",
        "trunk initialisation: imagenet (torchvision weights), none, or a local state-dict path",
        "model",
    )
    image_size: tuple[int, int] = _f((224, 224), "input size HxW", "model")
    decoder_widths: tuple[int, ...] | None = _f(
        None, "decoder block widths, comma-separated (default: the model's)", "model"
    )
    dropout: float = _f(0.0, "dropout before the classifier", "model")
    normalize_features: bool = _f(False, "L2-normalise the identity vector at test time", "model")
    pooling: str = _f(
        "max",
        "pooling of the identity map into the identity vector: max, or gem (generalised "
        "mean with a learnable exponent, initialised at 3); the pose encoder max-pools",
        "model",
        choices=POOLING_CHOICES,
    )
    # -- sampling --------------------------------------------------------------------------
    batch_size: int = _f(32, "source images per step and process (P identities x K)", "sampling")
    num_instances: int = _f(4, "K: images per identity in a source batch (>= 2)", "sampling")
    target_batch_size: int | None = _f(
        None, "target images per step (default: batch_size)", "sampling"
    )
    workers: int | None = _f(
        None,
        "data-loading worker processes per loader (0: load in the main process; default: "
        "min(4, CPU count))",
        "sampling",
    )
    random_erasing: float = _f(0.0, "probability of random erasing on training images", "sampling")
    target_style_prob: float = _f(
        0.0,
        "adapt mode: probability that a source image takes the per-channel colour statistics "
        "(brightness, contrast, colour cast) of a random unlabelled target image",
        "sampling",
    )
    crop_padding: int | None = _f(
        None,
        "zero padding (pixels) before the random training crop (default: 10 at an image "
        "height of 256, scaled with the height, e.g. 2 at 64x32)",
        "sampling",
    )
    # -- optimisation ----------------------------------------------------------------------
    max_steps: int = _f(10000, "training steps", "optimisation")
    epochs: float | None = _f(
        None,
        "train for this many passes over the source train set (overrides max_steps)",
        "optimisation",
    )
    optimizer: str = _f("sgd", "optimiser", "optimisation", choices=OPTIMIZERS)
    lr: float = _f(0.01, "learning rate of the new layers (decoder, classifier)", "optimisation")
    backbone_lr: float | None = _f(
        None,
        "learning rate of the two ResNet trunks (default: lr/10 with pretrained trunks, lr "
        "otherwise)",
        "optimisation",
    )
    momentum: float = _f(0.9, "SGD momentum (Adam beta1)", "optimisation")
    weight_decay: float = _f(5e-4, "weight decay", "optimisation")
    warmup_steps: int = _f(500, "linear learning-rate warm-up steps", "optimisation")
    schedule: str = _f(
        "cosine", "learning-rate schedule after warm-up", "optimisation", choices=SCHEDULES
    )
    milestones: tuple[int, ...] = _f(
        (),
        "step schedule: steps where lr is multiplied by gamma (default 50%%, 75%% of max_steps)",
        "optimisation",
    )
    gamma: float = _f(0.1, "step schedule: lr factor at each milestone", "optimisation")
    restart_every: int = _f(
        0,
        "cosine schedule: restart the cosine every N steps after the warm-up (SGDR; 0: one "
        "cosine to max_steps); with method cluster, N = cluster_every ends each cycle at a "
        "clustering",
        "optimisation",
    )
    # -- losses ----------------------------------------------------------------------------
    w_cls: float = _f(
        1.0,
        "weight of the source classification loss (also kept during the pseudo-label stage)",
        "losses",
    )
    w_rec: float = _f(0.1, "weight of the reconstruction loss (seed --w_loss_rec)", "losses")
    w_dif: float = _f(0.1, "weight of the identity/pose difference loss (--w_loss_dif)", "losses")
    w_mmd: float = _f(0.1, "weight of the source/target MMD loss (--w_loss_mmd)", "losses")
    w_ctr: float = _f(0.1, "weight of the contrastive loss (--w_loss_ctr)", "losses")
    w_tri: float = _f(0.0, "weight of the batch-hard triplet loss", "losses")
    rec_loss: str = _f("l1", "reconstruction distance", "losses", choices=REC_LOSSES)
    ctr_margin: float | None = _f(
        None, "contrastive margin (default: the loss function's)", "losses"
    )
    tri_margin: float = _f(0.3, "triplet margin", "losses")
    mmd_bandwidths: tuple[float, ...] | None = _f(
        None, "MMD Gaussian kernel bandwidths, comma-separated (default: the loss's)", "losses"
    )
    label_smoothing: float = _f(0.0, "label smoothing of the classification loss", "losses")
    w_ccl: float = _f(
        1.0, "cluster method: weight of the cluster-contrast loss on the target", "losses"
    )
    # -- pseudo-label stage (method cluster) -------------------------------------------------
    cluster_k1: int = _f(
        30,
        "k-reciprocal neighbours of the Jaccard distance (30 for real datasets; about the "
        "images per identity at small scale, e.g. 15 for 12 images per identity)",
        "cluster",
    )
    cluster_k2: int = _f(6, "query expansion of the Jaccard distance", "cluster")
    cluster_eps: float | None = _f(
        None,
        "DBSCAN radius on the Jaccard distance, in (0, 1) (default: MMT's rule, the mean of "
        "the smallest 0.16%% of the pairwise distances)",
        "cluster",
    )
    cluster_min_samples: int = _f(4, "DBSCAN min_samples", "cluster")
    cluster_every: int | None = _f(
        None,
        "steps between two clusterings (default: one pass over the target training images)",
        "cluster",
    )
    cluster_flip: bool = _f(
        False, "average features with the mirrored image's when clustering", "cluster"
    )
    cluster_camera_bn: bool = _f(
        False,
        "cluster features extracted with camera-wise BatchNorm statistics of the target",
        "cluster",
    )
    cluster_camera_aware: bool = _f(
        False,
        "PK batches over pseudo-identities take each identity's K images from as many "
        "cameras as it has",
        "cluster",
    )
    cluster_split_bn: bool = _f(
        False,
        "with the source classification kept (w_cls > 0), each step's target and source "
        "images pass the identity encoder separately, so BatchNorm normalises each domain "
        "with its own batch statistics (default: one mixed batch)",
        "cluster",
    )
    cluster_reliability: float | None = _f(
        None,
        "SpCL's reliability criterion: cluster again at eps -/+ this radius change (0.02 in "
        "SpCL) and train only on the clusters that stay apart and, in each, the samples that "
        "stay together (default: off, every DBSCAN cluster)",
        "cluster",
    )
    cluster_mixup: float = _f(
        0.0,
        "mixup of the target batch: each step blends its images with a permutation of them, "
        "weight lam ~ Beta(a, a) for this a, and mixes the two pseudo-labels' cluster-contrast "
        "losses by lam; the memory moves with the unblended images (0: off)",
        "cluster",
    )
    memory_momentum: float = _f(0.1, "momentum of the centroid memory update", "cluster")
    memory_temperature: float = _f(0.05, "temperature of the centroid cross-entropy", "cluster")
    # -- evaluation and logging ------------------------------------------------------------
    eval_every: int = _f(1000, "evaluate on the target query/gallery every N steps", "logging")
    dist_metric: str = _f("cosine", "evaluation distance", "logging", choices=DIST_METRICS)
    camera_bn: bool = _f(
        False,
        "evaluate with camera-wise BatchNorm statistics: each camera's images are normalised "
        "with statistics recomputed from that camera's unlabelled training images (a "
        "test-time adaptation; reads camera ids, never identity labels)",
        "logging",
    )
    eval_batch_size: int = _f(128, "batch size of feature extraction", "logging")
    max_rank: int = _f(50, "longest CMC rank computed", "logging")
    log_every: int = _f(20, "write losses and learning rate every N steps", "logging")
    image_every: int = _f(500, "write input/pose/reconstruction grids every N steps", "logging")
    save_every: int | None = _f(
        None, "write checkpoints/last.pt every N steps (default: eval_every)", "logging"
    )
    # -- runtime ---------------------------------------------------------------------------
    device: str = _f("auto", "auto, cpu, cuda or cuda:N", "runtime")
    amp: bool = _f(False, "mixed precision (CUDA only; ignored with a warning on CPU)", "runtime")
    engine: str = _f(
        "auto",
        "inference engine of the evaluations and of the pseudo-label stage's feature "
        "extraction: auto (onnxruntime on CPU when the model exports, torch on CUDA), torch "
        "or onnxruntime",
        "runtime",
    )
    channels_last: bool = _f(False, "channels-last memory format", "runtime")
    seed: int = _f(0, "random seed (data order, augmentation, initialisation)", "runtime")
    resume: str | None = _f(None, "continue a run: its folder or a checkpoint file", "runtime")
    init_from: str | None = _f(
        None,
        "initialise weights from a run folder or checkpoint (classifier skipped when the "
        "class count differs)",
        "runtime",
    )

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists instead of tuples) suitable for YAML and ``weights_only`` loads."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "config") -> TrainConfig:
        """Build from a mapping of field names (``-`` or ``_`` spelling) to values.

        Unknown keys and values of the wrong type raise :class:`ConfigError` naming them.
        """
        return cls(**_coerce_mapping(data, origin))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (values coerced like YAML values)."""
        return dataclasses.replace(self, **_coerce_mapping(changes, "replace()"))

    # ------------------------------------------------------------------------------------
    @property
    def uses_target_batches(self) -> bool:
        """Whether training draws unlabelled target batches (adapt mode with a target loss)."""
        return terms.uses_target_batches(self)

    @property
    def effective_target_batch_size(self) -> int:
        return self.target_batch_size if self.target_batch_size is not None else self.batch_size

    @property
    def effective_crop_padding(self) -> int:
        """Pad-and-crop shift in pixels: ``crop_padding``, else 10 px per 256 px of height
        (the usual re-ID recipe at 256x128), so small images are not shifted out of view."""
        if self.crop_padding is not None:
            return self.crop_padding
        return round(10 * self.image_size[0] / 256)

    @property
    def effective_save_every(self) -> int:
        return self.save_every if self.save_every is not None else self.eval_every

    def validate(self) -> None:
        """Check option values and combinations; :class:`ConfigError` naming the first problem."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(
                    f"{f.name} is {value!r}; expected one of {', '.join(map(str, choices))}"
                )
        if self.mode == "oracle":
            if not self.target:
                raise ConfigError("mode oracle trains on the target's labels: give a target")
        elif not self.source:
            raise ConfigError("no source dataset given (source / --source)")
        if self.mode == "adapt" and not self.target:
            raise ConfigError(
                "mode adapt needs a target dataset (target / --target); use mode source-only "
                "to train on the source alone"
            )
        positive_ints = [
            "batch_size",
            "num_instances",
            "max_steps",
            "eval_every",
            "log_every",
            "image_every",
            "eval_batch_size",
            "max_rank",
        ]
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {self.crop_padding}")
        for name in ("target_batch_size", "save_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.num_instances < 2:
            raise ConfigError(
                f"num_instances must be >= 2 (each anchor needs a positive of the same identity "
                f"in its batch), got {self.num_instances}"
            )
        if self.batch_size % self.num_instances:
            raise ConfigError(
                f"batch_size {self.batch_size} is not divisible by num_instances "
                f"{self.num_instances}; a PK batch holds P identities x K images"
            )
        if self.max_rank < 20:
            raise ConfigError(f"max_rank must be >= 20 (rank-20 is reported), got {self.max_rank}")
        h, w = self.image_size
        if h < 16 or w < 16:
            raise ConfigError(f"image_size {h}x{w}: both sides must be at least 16 pixels")
        if (self.workers is not None and self.workers < 0) or self.warmup_steps < 0:
            raise ConfigError("workers and warmup_steps must be >= 0")
        if self.restart_every < 0 or (self.restart_every and self.schedule != "cosine"):
            raise ConfigError(
                f"restart_every must be >= 0 and needs schedule cosine, got {self.restart_every} "
                f"(schedule {self.schedule})"
            )
        if not 0 <= self.target_style_prob <= 1:
            raise ConfigError(f"target_style_prob must be in [0, 1], got {self.target_style_prob}")
        if not 0 <= self.random_erasing <= 1:
            raise ConfigError(f"random_erasing must be in [0, 1], got {self.random_erasing}")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        for name in ("lr", "backbone_lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        for name in (
            *(term.weight_field for term in terms.LOSS_TERMS),
            "weight_decay",
            "momentum",
            "dropout",
            "label_smoothing",
            "tri_margin",
            "gamma",
        ):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("dropout and label_smoothing must be in [0, 1)")
        if self.mmd_bandwidths is not None and (
            not self.mmd_bandwidths or any(b <= 0 for b in self.mmd_bandwidths)
        ):
            raise ConfigError(f"mmd_bandwidths must be positive, got {self.mmd_bandwidths}")
        if self.decoder_widths is not None and any(w_ < 1 for w_ in self.decoder_widths):
            raise ConfigError(f"decoder_widths must be positive, got {self.decoder_widths}")
        if self.mode != "oracle" and not terms.supervises_identity(self):
            names = ", ".join(t.weight_field for t in terms.identity_terms(self.method))
            raise ConfigError(f"{names} are all 0: nothing teaches the identity encoder")
        if self.method == "cluster":
            self._validate_cluster()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device {self.device!r}; expected auto, cpu, cuda or cuda:N")
        if self.resume and self.init_from:
            raise ConfigError("resume and init_from are exclusive (resume restores everything)")

    def _validate_cluster(self) -> None:
        if self.mode != "adapt" or not self.target:
            raise ConfigError(
                "method cluster trains on the target's pseudo-labels: it needs "
                "mode adapt and a target"
            )
        if not self.w_ccl > 0:
            raise ConfigError(
                "method cluster needs w_ccl > 0 (the cluster-contrast loss on the target's "
                "pseudo-labels; w_cls alone would train on the source only)"
            )
        for name in ("cluster_k1", "cluster_k2", "cluster_min_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cluster_every is not None and self.cluster_every < 1:
            raise ConfigError(f"cluster_every must be >= 1, got {self.cluster_every}")
        if self.cluster_eps is not None and not 0 < self.cluster_eps < 1:
            raise ConfigError(f"cluster_eps must be in (0, 1), got {self.cluster_eps}")
        if self.cluster_split_bn and not self.w_cls > 0:
            raise ConfigError(
                "cluster_split_bn separates the target and source images of a step, and with "
                "w_cls 0 the stage has no source images: set w_cls > 0 or drop the option"
            )
        if not (math.isfinite(self.cluster_mixup) and self.cluster_mixup >= 0):
            raise ConfigError(f"cluster_mixup must be >= 0 (0: off), got {self.cluster_mixup}")
        if self.cluster_reliability is not None:
            delta, eps = self.cluster_reliability, self.cluster_eps
            if not 0 < delta < 0.5 or (eps is not None and not 0 < eps - delta < eps + delta < 1):
                raise ConfigError(
                    f"cluster_reliability must be in (0, 0.5) with cluster_eps -/+ it in (0, 1), "
                    f"got {delta} (cluster_eps {eps})"
                )
        if not 0 <= self.memory_momentum < 1:
            raise ConfigError(f"memory_momentum must be in [0, 1), got {self.memory_momentum}")
        if not (self.memory_temperature > 0 and math.isfinite(self.memory_temperature)):
            raise ConfigError(
                f"memory_temperature must be a positive number, got {self.memory_temperature}"
            )


def config_fields() -> tuple[dataclasses.Field, ...]:
    """The fields of :class:`TrainConfig` (name, default, ``metadata['help']`` ...)."""
    return dataclasses.fields(TrainConfig)


# ---------------------------------------------------------------------------------------------
# Value coercion (YAML and command-line strings to field types)
# ---------------------------------------------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def parse_image_size(value: Any) -> tuple[int, int]:
    """``"256x128"``, ``"256,128"``, ``[256, 128]`` or ``224`` → ``(H, W)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, str):
        parts = re.split(r"[x×,\s]+", value.strip().lower())
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = []
    try:
        size = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        size = ()
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"image_size {value!r}: expected HxW, e.g. 256x128")
    return size  # type: ignore[return-value]


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def coerce_value(name: str, value: Any) -> Any:
    """Convert ``value`` (a YAML value or a command-line string) to the type of field ``name``."""
    hint, optional = _strip_optional(_HINTS[name])
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "null")):
        if optional:
            return None
        raise ConfigError(f"{name} cannot be empty")
    if name == "image_size":
        return parse_image_size(value)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            items = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else value
            if not isinstance(items, list | tuple):
                items = [items]
            return tuple(item(v) for v in items if v != "")
        if hint is str:
            if isinstance(value, bool | list | dict):
                raise ValueError(value)
            text = str(value)
            return os.fspath(text)
    except (TypeError, ValueError):
        pass
    else:
        return value
    kind = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{name}: {value!r} is not a valid {kind}")


def _coerce_mapping(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            close = [n for n in _FIELDS if n.split("_")[0] == name.split("_")[0]]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ConfigError(f"{origin}: unknown option {key!r}{hint}")
        out[name] = coerce_value(name, value)
    return out


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into a mapping of validated field names to coerced values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must be a mapping of option: value")
    return _coerce_mapping(data, str(path))


def build_config(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    validate: bool = True,
) -> TrainConfig:
    """Defaults < YAML ``config_file`` < ``overrides`` (e.g. parsed command-line flags)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_config_file(config_file))
    if overrides:
        values.update(_coerce_mapping(overrides, "option"))
    config = TrainConfig(**values)
    if validate:
        config.validate()
    return config
