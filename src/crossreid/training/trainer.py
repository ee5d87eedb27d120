"""The adaptation training loop: :func:`train` runs a :class:`TrainConfig` to a finished run.

One step (design section 1):

1. a PK source batch ``x`` with pids (P identities × K images) and, in ``adapt`` mode, an
   unlabelled target batch ``t``;
2. a *positive* for every anchor: another image of the same identity in the batch
   (a random non-identity cyclic shift within each identity group);
3. identity encoder on ``[x; t]`` → maps and vectors; pose encoder on the colour-jittered
   ``[jitter(x); jitter(t)]``;
4. the decoder gets (identity map of the anchor, pose map of its jittered positive) and
   reconstructs the positive (cross-reconstruction), and (identity map, pose map) of each
   target image to reconstruct it (self-reconstruction);
5. losses: classification, contrastive and optional triplet on the source identity
   vectors; reconstruction; difference between identity and pose vectors; MMD between the
   source and target identity vectors. Terms with weight 0 are not computed at all (the
   ``source-only`` mode draws no target batch).

Reproducibility: the data stream is a function of ``(seed, step)``
(:func:`crossreid.data.loaders.infinite_batches`), and every step reseeds the random
state it uses (pose jitter, positives, dropout) from ``(seed, step, rank)``, so on CPU a run
resumed at step N continues bit for bit as the uninterrupted run would have.

Example::

    >>> from crossreid.training import TrainConfig, train
    >>> result = train(TrainConfig(source="synthetic:A", target="synthetic:B",
    ...                            backbone="resnet18", pretrained="none",
    ...                            image_size=(128, 64), max_steps=2000))   # doctest: +SKIP
    >>> result.best_metrics["mAP"]                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossreid.data.base import ImageRecord
from crossreid.errors import CheckpointError, ConfigError, DatasetError, TrainingError
from crossreid.training.config import TrainConfig
from crossreid.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from crossreid.training.logging import METRIC_KEYS, RunLogger
from crossreid.training.schedule import LRSchedule, build_scheduler

logger = logging.getLogger(__name__)

__all__ = [
    "LOSS_NAMES",
    "TrainResult",
    "TrainingStep",
    "config_from_checkpoint",
    "evaluate_model",
    "find_checkpoint",
    "positive_permutation",
    "resolve_device",
    "resolve_dataset",
    "train",
]

#: Loss terms in the order they are logged; ``total`` is their weighted sum.
LOSS_NAMES = ("cls", "rec", "dif", "mmd", "ctr", "tri")


def resolve_dataset(spec: str, data_root: str | None, *, progress: bool = True):
    """Resolve a dataset spec (indirection kept so tests can substitute datasets)."""
    from crossreid.data.specs import resolve_dataset as _resolve

    return _resolve(spec, data_root, progress=progress)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` → a device; :class:`ConfigError` if absent.

    Under ``torchrun`` (``local_rank``) a bare ``cuda`` or ``auto`` selects ``cuda:local_rank``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} requested but CUDA is not available on this machine "
            "(use --device cpu)"
        )
    device = torch.device(name)
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"device cuda:{index} requested but only {torch.cuda.device_count()} CUDA "
            "device(s) are visible"
        )
    return torch.device("cuda", index)


def find_checkpoint(path: str | Path, *, prefer_best: bool = False) -> Path:
    """A run folder or checkpoint file → the checkpoint file to read.

    For a folder: ``checkpoints/last.pt`` (``best.pt`` first when ``prefer_best``), also
    accepting a folder that directly holds them. :class:`CheckpointError` if none exists.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint or run folder {path} does not exist")
    names = ("best.pt", "last.pt") if prefer_best else ("last.pt", "best.pt")
    for folder in (path / "checkpoints", path):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise CheckpointError(
        f"{path} holds no checkpoint (looked for checkpoints/last.pt and checkpoints/best.pt)"
    )


def config_from_checkpoint(path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` stored in a run's checkpoint (to resume it with few flags)."""
    from crossreid.models.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(find_checkpoint(path))
    stored = checkpoint.get("train_config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"checkpoint {path} holds no training configuration")
    return TrainConfig.from_dict(stored, origin=f"checkpoint {path}")


def _step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A 63-bit seed that is a function of ``(seed, step, rank, stream)`` only."""
    state = np.random.SeedSequence([seed, step, rank, stream, 0x5EED]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


def positive_permutation(
    pids: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each anchor, the batch index of a positive: another image of the same identity.

    Within each identity group (``n >= 2`` images) the indices are cyclically shifted by a
    random ``s`` in ``[1, n-1]``, so no anchor is its own positive and every image is the
    positive of exactly one anchor.

    Args:
        pids: ``[B]`` identity labels (CPU).
    Returns:
        ``[B]`` long tensor ``perm`` with ``pids[perm] == pids`` and ``perm[i] != i``.
    Raises:
        TrainingError: an identity appears only once in the batch.
    """
    pids = pids.cpu()
    perm = torch.arange(len(pids))
    for pid in torch.unique(pids).tolist():
        members = torch.nonzero(pids == pid).flatten()
        n = len(members)
        if n < 2:
            raise TrainingError(
                f"identity {pid} has a single image in the source batch; PK batches need K >= 2"
            )
        shift = int(torch.randint(1, n, (1,), generator=generator))
        perm[members] = members.roll(shift)
    return perm


def _capture_rng() -> dict[str, Any]:
    """Global RNG states as tensors and plain data (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [int(version), list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    with contextlib.suppress(KeyError, TypeError, ValueError, RuntimeError):
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(
            (
                n["kind"],
                n["keys"].numpy().astype(np.uint32),
                n["pos"],
                n["has_gauss"],
                n["cached_gaussian"],
            )
        )
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def evaluate_model(
    model: nn.Module,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    *,
    image_size: Sequence[int],
    dist_metric: str = "cosine",
    max_rank: int = 50,
    batch_size: int = 128,
    workers: int | None = 0,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    camera_bn: Sequence[ImageRecord] | None = None,
) -> tuple[dict[str, float], list[float]]:
    """Rank-k/mAP/mINP of ``model`` on a query/gallery split (Market protocol).

    Features are the identity vectors (``model.forward``) of the test transform, without
    flipping; extraction leaves the model's training flag as it was. ``camera_bn``:
    unlabelled images of the same cameras to take camera-wise BatchNorm statistics from
    (:mod:`crossreid.evaluation.camera_bn`).

    Returns ``(metrics, cmc)``: ``metrics`` has ``rank1, rank5, rank10, rank20, mAP, mINP``
    as fractions; ``cmc`` is the curve up to ``max_rank`` (``cmc[k-1]`` = rank-k).
    """
    from crossreid.evaluation import evaluate_rank, pairwise_distance
    from crossreid.evaluation.extraction import extract_features

    def features(records: Sequence[ImageRecord], desc: str):
        return extract_features(
            model,
            records,
            image_size,
            batch_size=batch_size,
            device=device,
            flip=False,
            workers=workers,
            channels_last=channels_last,
            desc=desc,
            camera_bn=camera_bn,
        )

    qf, q_pids, q_camids, _ = features(query, "query")
    gf, g_pids, g_camids, _ = features(gallery, "gallery")
    distmat = pairwise_distance(qf, gf, metric=dist_metric)
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    metrics = {key: float(value) for key, value in result.as_dict().items()}
    return {key: metrics[key] for key in METRIC_KEYS}, [float(v) for v in result.cmc]


# ---------------------------------------------------------------------------------------------
# One training step
# ---------------------------------------------------------------------------------------------


class _StepForward(nn.Module):
    """Every network part one step needs, in a single ``forward`` (what DDP wraps).

    Args of ``forward``: source ``[B,3,H,W]``, jittered source ``[B,3,H,W]``, positive
    index ``[B]``, optionally target and jittered target ``[Bt,3,H,W]``.
    Returns a dict of ``id_vec [B+Bt, C]``, and when needed ``pose_vec [B+Bt, C]``,
    ``reconstruction [B+Bt,3,H,W]`` (source positives, then target images) and
    ``logits [B, N]``.
    """

    def __init__(self, model: nn.Module, *, pose: bool, decoder: bool, logits: bool) -> None:
        super().__init__()
        self.model = model
        self.use_pose = pose
        self.use_decoder = decoder
        self.use_logits = logits
        self.timer: Callable[[str], contextlib.AbstractContextManager] = lambda name: (
            contextlib.nullcontext()
        )

    def forward(
        self,
        source: torch.Tensor,
        pose_source: torch.Tensor,
        positive: torch.Tensor,
        target: torch.Tensor | None = None,
        pose_target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        model, timer = self.model, self.timer
        images = source if target is None else torch.cat((source, target))
        out: dict[str, torch.Tensor] = {}
        with timer("identity_encoder"):
            id_map, out["id_vec"] = model.encode_identity(images)
        if self.use_pose:
            pose_images = (
                pose_source if pose_target is None else torch.cat((pose_source, pose_target))
            )
            with timer("pose_encoder"):
                pose_map, out["pose_vec"] = model.encode_pose(pose_images)
            if self.use_decoder:
                b = source.shape[0]
                # Source: identity of the anchor + pose of its positive → the positive.
                # Target: identity and pose of the same image → itself.
                pose_for_decoder = torch.cat((pose_map[:b][positive], pose_map[b:]))
                with timer("decoder"):
                    out["reconstruction"] = model.decode(id_map, pose_for_decoder)
        if self.use_logits:
            with timer("classifier"):
                out["logits"] = model.classify(out["id_vec"][: source.shape[0]])
        return out


@dataclass
class StepOutput:
    """Loss values of one step (``total`` plus each computed term) and optional images."""

    losses: dict[str, float]
    grad_norm: float
    images: dict[str, torch.Tensor] | None = None


class TrainingStep:
    """Forward, losses, backward and optimiser update of one step.

    Built by :func:`train`; also used directly by ``benchmarks/train_step.py`` (set
    :attr:`timer` to a ``name -> context manager`` factory to time the parts: encoders,
    decoder and classifier inside the forward, then ``losses`` and ``backward_optimizer``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        config: TrainConfig,
        device: torch.device,
        *,
        dist_info: DistInfo | None = None,
        scaler: torch.amp.GradScaler | None = None,
        use_target: bool = True,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.config = config
        self.device = device
        self.dist = dist_info or DistInfo()
        self.scaler = scaler
        self.amp = scaler is not None
        w = config
        self.use_target = use_target
        self.use_pose = w.w_rec > 0 or w.w_dif > 0
        self.use_decoder = w.w_rec > 0
        self.use_logits = w.w_cls > 0
        freeze_unused_parts(model, config)
        self.forward_module: nn.Module = _StepForward(
            model, pose=self.use_pose, decoder=self.use_decoder, logits=self.use_logits
        )
        self._inner = self.forward_module
        if self.dist.is_distributed:
            self.forward_module = nn.parallel.DistributedDataParallel(
                self.forward_module,
                device_ids=[device.index] if device.type == "cuda" else None,
            )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.timer: Callable[[str], contextlib.AbstractContextManager] = lambda name: (
            contextlib.nullcontext()
        )
        from crossreid import losses

        self._losses = losses

    def _loss_terms(
        self,
        out: dict[str, torch.Tensor],
        pids: torch.Tensor,
        positive: torch.Tensor,
        source: torch.Tensor,
        target: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        c, L = self.config, self._losses
        b = source.shape[0]
        id_vec = out["id_vec"].float()
        src_vec = id_vec[:b]
        terms: dict[str, torch.Tensor] = {}
        if c.w_cls > 0:
            terms["cls"] = L.classification_loss(
                out["logits"].float(), pids, label_smoothing=c.label_smoothing
            )
        if c.w_rec > 0:
            wanted = source[positive] if target is None else torch.cat((source[positive], target))
            terms["rec"] = L.reconstruction_loss(
                out["reconstruction"].float(), wanted.float(), kind=c.rec_loss
            )
        if c.w_dif > 0:
            terms["dif"] = L.difference_loss(id_vec, out["pose_vec"].float())
        if c.w_mmd > 0 and target is not None:
            kwargs = {} if c.mmd_bandwidths is None else {"bandwidths": c.mmd_bandwidths}
            terms["mmd"] = L.mmd_loss(src_vec, id_vec[b:], **kwargs)
        if c.w_ctr > 0:
            kwargs = {} if c.ctr_margin is None else {"margin": c.ctr_margin}
            terms["ctr"] = L.contrastive_loss(src_vec, pids, **kwargs)
        if c.w_tri > 0:
            terms["tri"] = L.triplet_loss(src_vec, pids, margin=c.tri_margin)
        return terms

    def __call__(
        self,
        step: int,
        source: torch.Tensor,
        pids: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        keep_images: bool = False,
    ) -> StepOutput:
        """Run step ``step`` (0-based) on a source batch (and target batch); update weights.

        Raises :class:`TrainingError` when the loss or the gradient is not finite, before
        the weights are touched.
        """
        c, dev, timer = self.config, self.device, self.timer
        self._inner.timer = timer
        seed = _step_seed(c.seed, step, self.dist.rank, 0)
        torch.manual_seed(seed)  # dropout and any other global-RNG use in this step
        generator = torch.Generator().manual_seed(seed ^ 0x9E3779B9)
        positive = positive_permutation(pids, generator)
        if not self.use_target:
            target = None

        with timer("data_to_device"):
            source = source.to(dev, non_blocking=True)
            pids = pids.to(dev, non_blocking=True)
            if target is not None:
                target = target.to(dev, non_blocking=True)
            if c.channels_last:
                source = source.contiguous(memory_format=torch.channels_last)
                if target is not None:
                    target = target.contiguous(memory_format=torch.channels_last)
            if target is not None and c.target_style_prob > 0:
                from crossreid.data.transforms import transfer_colour_statistics

                source = transfer_colour_statistics(
                    source, target, generator, prob=c.target_style_prob
                )
            pose_source = pose_jitter_fn(source, generator) if self.use_pose else source
            pose_target = (
                pose_jitter_fn(target, generator) if self.use_pose and target is not None else None
            )
            positive_dev = positive.to(dev)

        with torch.autocast(dev.type, dtype=torch.float16, enabled=self.amp):
            out = self.forward_module(source, pose_source, positive_dev, target, pose_target)
        with timer("losses"):
            terms = self._loss_terms(out, pids, positive_dev, source, target)
            weights = {
                "cls": c.w_cls,
                "rec": c.w_rec,
                "dif": c.w_dif,
                "mmd": c.w_mmd,
                "ctr": c.w_ctr,
                "tri": c.w_tri,
            }
            total = sum(weights[name] * value for name, value in terms.items())
        with timer("backward_optimizer"):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                total.backward()
            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = (
                torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=dev)
            )
            # One host sync per step for all the numbers the loop reports.
            values = torch.stack(
                [
                    total.detach().float(),
                    grad_norm.float(),
                    *(t.detach().float() for t in terms.values()),
                ]
            ).tolist()
            total_value, norm_value = values[0], values[1]
            if not math.isfinite(total_value) or (
                self.scaler is None and not math.isfinite(norm_value)
            ):
                self.optimizer.zero_grad(set_to_none=True)
                detail = ", ".join(f"{k}={v:.4g}" for k, v in zip(terms, values[2:], strict=True))
                what = "loss" if not math.isfinite(total_value) else "gradient norm"
                raise TrainingError(
                    f"{what} is not finite at step {step + 1} (total={total_value:.4g}, "
                    f"grad_norm={norm_value:.4g}; {detail})"
                )
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()

        losses = {"total": total_value, **dict(zip(terms, values[2:], strict=True))}
        images = None
        if keep_images:
            from crossreid.data.transforms import denormalize

            n = min(8, source.shape[0])
            images = {
                "input": denormalize(source[:n].float()),
                "positive": denormalize(source[positive_dev][:n].float()),
            }
            if self.use_pose:
                images["pose_input"] = denormalize(pose_source[positive_dev][:n].float())
            if "reconstruction" in out:
                images["reconstruction"] = denormalize(out["reconstruction"][:n].detach().float())
                if target is not None:
                    b = source.shape[0]
                    images["target_input"] = denormalize(target[:n].float())
                    images["target_reconstruction"] = denormalize(
                        out["reconstruction"][b : b + n].detach().float()
                    )
        return StepOutput(losses, norm_value, images)


def pose_jitter_fn(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The pose encoder's colour jitter (channel shuffle + inversion), seeded per step."""
    from crossreid.data.transforms import pose_jitter

    return pose_jitter(images, generator)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a finished run produced.

    ``final_metrics`` / ``best_metrics``: ``rank1, rank5, rank10, rank20, mAP, mINP``
    (fractions) at the last step and at the best evaluation by mAP; ``final_cmc`` the final
    CMC curve; ``history`` one dict of loss values per step run by this call (rank 0's).
    ``model`` is the trained network (eval mode, on the training device).
    """

    config: TrainConfig
    output: Path
    steps: int
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    best_step: int
    final_cmc: list[float]
    metrics_path: Path
    last_checkpoint: Path
    best_checkpoint: Path
    seconds: float
    model: nn.Module | None = None
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Data:
    train_records: list[ImageRecord]
    num_classes: int
    eval_query: list[ImageRecord]
    eval_gallery: list[ImageRecord]
    eval_name: str
    eval_train: list[ImageRecord]  # unlabelled use only: camera-wise BatchNorm statistics
    target_records: list[ImageRecord] | None


def _load_data(config: TrainConfig, progress: bool) -> _Data:
    """Resolve the specs; pick training, target and evaluation splits for the mode."""
    if config.mode == "oracle":
        target = resolve_dataset(config.target, config.data_root, progress=progress)
        train_ds, train_spec = target, config.target
    else:
        train_ds, train_spec = (
            resolve_dataset(config.source, config.data_root, progress=progress),
            config.source,
        )
        target = (
            resolve_dataset(config.target, config.data_root, progress=progress)
            if config.target
            else None
        )
    if train_ds.num_train_pids < 2:
        raise DatasetError(
            f"{train_spec}: the training split has {train_ds.num_train_pids} identity; "
            "at least 2 are needed (classification and PK batches)"
        )
    evaluation = target if target is not None else train_ds
    eval_spec = config.target if target is not None else train_spec
    return _Data(
        train_records=list(train_ds.train),
        num_classes=train_ds.num_train_pids,
        eval_query=list(evaluation.query),
        eval_gallery=list(evaluation.gallery),
        eval_name=str(eval_spec),
        eval_train=list(evaluation.train),
        target_records=list(target.train)
        if target is not None and config.mode == "adapt"
        else None,
    )


def _build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    pretrained_trunks = config.pretrained.lower() != "none" or config.init_from is not None
    backbone_lr = config.backbone_lr
    if backbone_lr is None:
        backbone_lr = config.lr * 0.1 if pretrained_trunks else config.lr
    groups = [
        {
            "params": [p for p in model.backbone_parameters() if p.requires_grad],
            "lr": backbone_lr,
            "name": "backbone",
        },
        {
            "params": [p for p in model.head_parameters() if p.requires_grad],
            "lr": config.lr,
            "name": "head",
        },
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(
        groups, lr=config.lr, betas=(config.momentum, 0.999), weight_decay=config.weight_decay
    )


def _write_config(config: TrainConfig, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    step_callback: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Run (or resume) the training described by ``config``; see the module docstring.

    ``step_callback(step, max_steps)``, when given, is called after every training step
    (e.g. to report progress from a worker process).

    Writes under ``config.output``: ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``,
    ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (rank 0 only under ``torchrun``).

    Raises:
        ConfigError: invalid options or an unavailable device.
        DatasetError: unknown/missing datasets, fewer than 2 source identities.
        CheckpointError: an unreadable ``resume``/``init_from`` checkpoint or one of another
            architecture (the message names the mismatched keys).
        TrainingError: the loss became NaN/inf; the message gives the step, and the last
            good ``checkpoints/last.pt`` is left intact.
    """
    config.validate()
    started = time.perf_counter()
    probe = resolve_device(config.device)  # fail fast on a missing GPU, before joining a group
    dist_info = setup_distributed(probe.type)
    try:
        return _run(
            config, dist_info, progress=progress, started=started, step_callback=step_callback
        )
    finally:
        cleanup_distributed(dist_info)


def _run(
    config: TrainConfig,
    dist_info: DistInfo,
    *,
    progress: bool,
    started: float,
    step_callback: Callable[[int, int], None] | None = None,
) -> TrainResult:
    from crossreid.data.loaders import build_source_loader, build_target_loader, infinite_batches
    from crossreid.models import CrossDomainReID
    from crossreid.models.checkpoint import (
        build_checkpoint,
        link_checkpoint,
        load_model_state,
        load_partial,
        read_checkpoint,
        save_checkpoint,
    )

    device = resolve_device(config.device, dist_info.local_rank)
    amp = config.amp
    if amp and device.type != "cuda":
        warnings.warn("--amp needs CUDA; training in float32 on CPU", stacklevel=2)
        amp = False
    is_main = dist_info.is_main
    output = Path(config.output)
    ckpt_dir = output / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"

    data = _load_data(config, progress and dist_info.is_main)

    # -- model, optimiser, schedule (resume / init_from) --------------------------------------
    resume_ckpt = None
    if config.resume:
        resume_path = find_checkpoint(config.resume)
        resume_ckpt = read_checkpoint(resume_path)
    init_ckpt = None
    if config.init_from:
        init_path = find_checkpoint(config.init_from, prefer_best=True)
        init_ckpt = read_checkpoint(init_path)

    torch.manual_seed(config.seed)  # initialisation of the new layers
    pretrained = (
        None
        if (resume_ckpt or init_ckpt) or config.pretrained.lower() == "none"
        else config.pretrained
    )
    model = CrossDomainReID(
        backbone=config.backbone,
        num_classes=data.num_classes,
        pretrained=pretrained,
        image_size=config.image_size,
        dropout=config.dropout,
        normalize_features=config.normalize_features,
        **({"decoder_widths": config.decoder_widths} if config.decoder_widths else {}),
    )
    if resume_ckpt is not None:
        load_model_state(model, resume_ckpt["model"], source=f"checkpoint {resume_path}")
    elif init_ckpt is not None:
        loaded, skipped = load_partial(model, init_ckpt["model"])
        logger.info(
            "init-from %s: loaded %d tensors, skipped %d", init_path, len(loaded), len(skipped)
        )
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    max_steps = config.max_steps
    # Loading and augmentation options shared by the source and target loaders.
    loader_options = {
        "workers": config.workers,
        "seed": config.seed,
        "rank": dist_info.rank,
        "world_size": dist_info.world_size,
        "random_erasing": config.random_erasing,
        "pad": config.effective_crop_padding,
    }
    source_loader = build_source_loader(
        data.train_records,
        config.image_size,
        config.batch_size,
        config.num_instances,
        **loader_options,
    )
    if config.epochs is not None:
        max_steps = max(1, math.ceil(config.epochs * len(source_loader)))
        # Recorded in config.yaml and the checkpoints, so a resume continues the same schedule.
        config = dataclasses.replace(config, max_steps=max_steps)

    use_target = data.target_records is not None and config.uses_target_batches
    freeze_unused_parts(model, config)  # before the optimiser, which takes trainable ones only
    optimizer = _build_optimizer(model, config)
    schedule = LRSchedule(
        max_steps=max_steps,
        warmup_steps=config.warmup_steps,
        kind=config.schedule,
        milestones=config.milestones,
        gamma=config.gamma,
    )
    scheduler = build_scheduler(optimizer, schedule)
    scaler = torch.amp.GradScaler("cuda") if amp else None

    start_step, best_map, best_step = 0, -1.0, 0
    best_metrics: dict[str, float] = {}
    if resume_ckpt is not None:
        try:
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            scheduler.load_state_dict(resume_ckpt["scheduler"])
            if scaler is not None and resume_ckpt.get("scaler"):
                scaler.load_state_dict(resume_ckpt["scaler"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {resume_path}: optimiser/scheduler state does not fit this "
                f"configuration ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
        start_step = int(resume_ckpt["step"])
        best_map = float(resume_ckpt.get("best_mAP", -1.0))
        best_step = int(resume_ckpt.get("best_step", 0))
        best_metrics = dict(resume_ckpt.get("best_metrics", {}))
        if "rng" in resume_ckpt:
            _restore_rng(resume_ckpt["rng"])
        logger.info("resumed %s at step %d", resume_path, start_step)

    step_fn = TrainingStep(
        model,
        optimizer,
        scheduler,
        config,
        device,
        dist_info=dist_info,
        scaler=scaler,
        use_target=use_target,
    )
    target_loader = None
    if use_target:
        target_loader = build_target_loader(
            data.target_records,
            config.image_size,
            config.effective_target_batch_size,
            **loader_options,
        )

    # -- outputs ------------------------------------------------------------------------------
    run_logger = RunLogger(
        output, enabled=is_main, resume_step=start_step if resume_ckpt is not None else None
    )
    if is_main:
        _write_config(config, output / "config.yaml")

    def checkpoint_payload(step: int) -> dict[str, Any]:
        return build_checkpoint(
            model,
            step=step,
            config={"num_classes": data.num_classes},
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else {},
            rng=_capture_rng(),
            best_mAP=best_map,
            best_step=best_step,
            best_metrics=best_metrics,
            train_config=config.to_dict(),
        )

    final_metrics: dict[str, float] = {}
    final_cmc: list[float] = []

    def evaluate_and_save(step: int, *, evaluate: bool, save: bool) -> None:
        nonlocal best_map, best_step, best_metrics, final_metrics, final_cmc
        if is_main:
            improved = False
            if evaluate:
                metrics, cmc = evaluate_model(
                    model,
                    data.eval_query,
                    data.eval_gallery,
                    image_size=config.image_size,
                    dist_metric=config.dist_metric,
                    max_rank=config.max_rank,
                    batch_size=config.eval_batch_size,
                    workers=config.workers,
                    device=device,
                    channels_last=config.channels_last,
                    camera_bn=data.eval_train if config.camera_bn else None,
                )
                final_metrics, final_cmc = metrics, cmc
                run_logger.evaluation(step, metrics)
                if metrics["mAP"] > best_map:
                    best_map, best_step, best_metrics, improved = (
                        metrics["mAP"],
                        step,
                        metrics,
                        True,
                    )
                if bar is not None:
                    bar.write(
                        f"step {step}: {data.eval_name} rank-1 {metrics['rank1']:.1%} "
                        f"mAP {metrics['mAP']:.1%} (best {best_map:.1%} at step {best_step})"
                    )
            if save or improved:
                payload = checkpoint_payload(step)
                save_checkpoint(last_path, payload)
                if improved:
                    link_checkpoint(last_path, best_path)  # one file on disk, two names
        barrier(dist_info)

    # -- the loop ------------------------------------------------------------------------------
    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=max_steps,
            initial=start_step,
            desc=f"train {config.mode}",
            dynamic_ncols=True,
            leave=True,
        )
    history: list[dict[str, float]] = []
    window: dict[str, float] = {}
    window_count = 0
    step = start_step
    model.train()
    source_stream: Iterator = infinite_batches(source_loader, start_step=start_step)
    target_stream: Iterator | None = (
        infinite_batches(target_loader, start_step=start_step) if target_loader else None
    )
    save_every = config.effective_save_every
    try:
        while step < max_steps:
            source_images, pids, _, _ = next(source_stream)
            target_images = next(target_stream)[0] if target_stream is not None else None
            keep_images = is_main and (step + 1) % config.image_every == 0
            try:
                out = step_fn(step, source_images, pids, target_images, keep_images=keep_images)
            except TrainingError as exc:
                kept = (
                    f"last good checkpoint {last_path} (step {_checkpoint_step(last_path)})"
                    if last_path.is_file()
                    else "no checkpoint had been written yet"
                )
                raise TrainingError(f"{exc}; training stopped, {kept}") from None
            step += 1
            history.append(out.losses)
            for key, value in out.losses.items():
                window[key] = window.get(key, 0.0) + value
            window_count += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in out.losses.items()}, refresh=False)
            if step_callback is not None:
                step_callback(step, max_steps)
            if step % config.log_every == 0 or step == max_steps:
                names = sorted(window)
                mean = torch.tensor([window[k] / window_count for k in names], dtype=torch.float64)
                mean = all_reduce_mean(mean.to(device), dist_info).cpu().tolist()
                run_logger.scalars(step, dict(zip(names, mean, strict=True)), prefix="loss/")
                run_logger.scalars(step, {"grad_norm": out.grad_norm}, prefix="train/")
                run_logger.scalars(
                    step,
                    {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)},
                    prefix="lr/",
                )
                window, window_count = {}, 0
            if out.images:
                run_logger.images(step, out.images)
            evaluate = step % config.eval_every == 0 or step == max_steps
            save = step % save_every == 0 or step == max_steps
            if evaluate or save:
                evaluate_and_save(step, evaluate=evaluate, save=save)
        if not final_metrics and is_main:  # resumed at or past max_steps: evaluate anyway
            evaluate_and_save(step, evaluate=True, save=not last_path.is_file())
    except KeyboardInterrupt:
        if is_main and step > start_step:
            save_checkpoint(last_path, checkpoint_payload(step))
            logger.warning("interrupted: saved %s at step %d", last_path, step)
        raise
    finally:
        if bar is not None:
            bar.close()
        run_logger.close()

    model.eval()
    return TrainResult(
        config=config,
        output=output,
        steps=step,
        final_metrics=final_metrics,
        best_metrics=best_metrics,
        best_step=best_step,
        final_cmc=final_cmc,
        metrics_path=run_logger.metrics_path,
        last_checkpoint=last_path,
        best_checkpoint=best_path,
        seconds=time.perf_counter() - started,
        model=model,
        history=history,
    )


def _checkpoint_step(path: Path) -> int | str:
    try:
        from crossreid.models.checkpoint import read_checkpoint

        return int(read_checkpoint(path)["step"])
    except Exception:  # only used to enrich an error message
        return "?"


def freeze_unused_parts(model: nn.Module, config: TrainConfig) -> None:
    """Stop gradients to the parts no weighted loss reaches (pose encoder without rec/dif,
    decoder without rec, classifier without cls), so DDP and the optimiser skip them."""
    if not (config.w_rec > 0 or config.w_dif > 0):
        model.pose_encoder.requires_grad_(False)
    if not config.w_rec > 0:
        model.decoder.requires_grad_(False)
    if not config.w_cls > 0:
        model.classifier.requires_grad_(False)
