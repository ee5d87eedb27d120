"""One training step of the ARN method: forward, losses, backward, optimiser update.

1. a PK source batch ``x`` with pids (P identities x K images) and, in ``adapt`` mode, an
   unlabelled target batch ``t``;
2. a *positive* for every anchor: another image of the same identity in the batch
   (:func:`positive_permutation`);
3. identity encoder on ``[x; t]`` → maps and vectors; pose encoder on the colour-jittered
   ``[jitter(x); jitter(t)]``;
4. the decoder gets (identity map of the anchor, pose map of its jittered positive) and
   reconstructs the positive (cross-reconstruction), and (identity map, pose map) of each
   target image to reconstruct it (self-reconstruction);
5. the weighted loss terms (:mod:`crossreid.training.terms`, computed by
   :data:`LOSS_FUNCTIONS`); terms with weight 0 are not computed at all, and the network
   parts only they need are frozen and never run.

Every step reseeds the random state it uses (pose jitter, positives, dropout) from
``(seed, step, rank)``, so on CPU a run resumed at step N continues bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from crossreid import losses
from crossreid.data.transforms import denormalize, pose_jitter, transfer_colour_statistics
from crossreid.errors import TrainingError
from crossreid.training.config import TrainConfig
from crossreid.training.optim import freeze_unused_parts
from crossreid.training.terms import LOSS_TERMS, active_terms, needs_part
from crossreid.utils.distributed import DistInfo

__all__ = [
    "LOSS_FUNCTIONS",
    "StepOutput",
    "StepTensors",
    "TrainingStep",
    "optimise",
    "positive_permutation",
    "step_seed",
]


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
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


def optimise(
    total: torch.Tensor,
    terms: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    params: list[torch.Tensor],
    step: int,
) -> list[float]:
    """Backward, optimiser and schedule step of a method's step; returns ``[total, grad_norm,
    *terms]`` as floats (one host sync).

    Raises:
        TrainingError: the loss or the gradient norm is not finite; the weights are untouched.
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = (
        torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=total.device)
    )
    values = torch.stack(
        [total.detach().float(), grad_norm.float(), *(t.detach().float() for t in terms.values())]
    ).tolist()
    total_value, norm_value = values[0], values[1]
    if not math.isfinite(total_value) or (scaler is None and not math.isfinite(norm_value)):
        optimizer.zero_grad(set_to_none=True)
        detail = ", ".join(f"{k}={v:.4g}" for k, v in zip(terms, values[2:], strict=True))
        what = "loss" if not math.isfinite(total_value) else "gradient norm"
        raise TrainingError(
            f"{what} is not finite at step {step + 1} (total={total_value:.4g}, "
            f"grad_norm={norm_value:.4g}; {detail})"
        )
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    return values


@dataclass
class StepTensors:
    """What the loss functions read: the forward's outputs and the batch.

    ``out``: ``id_vec [B+Bt, C]`` and, when needed, ``pose_vec``, ``reconstruction`` and
    ``logits [B, N]`` (see :class:`_StepForward`); ``pids [B]``; ``positive [B]`` (index of
    each anchor's positive); ``source [B,3,H,W]``; ``target [Bt,3,H,W]`` or ``None``; the
    colour-jittered copies the pose encoder sees; ``id_vec`` (float32) and ``source_vec``
    (its first ``B`` rows), set once after the forward so every term shares the same
    autograd nodes (the gradient sums, and so the run, do not depend on how many terms read
    them).
    """

    out: dict[str, torch.Tensor]
    pids: torch.Tensor
    positive: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor | None
    pose_source: torch.Tensor | None = None
    pose_target: torch.Tensor | None = None
    id_vec: torch.Tensor | None = None
    source_vec: torch.Tensor | None = None

    def set_outputs(self, out: dict[str, torch.Tensor]) -> None:
        self.out = out
        self.id_vec = out["id_vec"].float()
        self.source_vec = self.id_vec[: self.source.shape[0]]


def _classification(t: StepTensors, c: TrainConfig) -> torch.Tensor:
    return losses.classification_loss(
        t.out["logits"].float(), t.pids, label_smoothing=c.label_smoothing
    )


def _reconstruction(t: StepTensors, c: TrainConfig) -> torch.Tensor:
    positives = t.source[t.positive]
    wanted = positives if t.target is None else torch.cat((positives, t.target))
    return losses.reconstruction_loss(
        t.out["reconstruction"].float(), wanted.float(), kind=c.rec_loss
    )


def _difference(t: StepTensors, c: TrainConfig) -> torch.Tensor:
    return losses.difference_loss(t.id_vec, t.out["pose_vec"].float())


def _mmd(t: StepTensors, c: TrainConfig) -> torch.Tensor:
    kwargs = {} if c.mmd_bandwidths is None else {"bandwidths": c.mmd_bandwidths}
    return losses.mmd_loss(t.source_vec, t.id_vec[t.source.shape[0] :], **kwargs)


def _contrastive(t: StepTensors, c: TrainConfig) -> torch.Tensor:
    kwargs = {} if c.ctr_margin is None else {"margin": c.ctr_margin}
    return losses.contrastive_loss(t.source_vec, t.pids, **kwargs)


def _triplet(t: StepTensors, c: TrainConfig) -> torch.Tensor:
    return losses.triplet_loss(t.source_vec, t.pids, margin=c.tri_margin)


#: The function of each ARN loss term of :data:`crossreid.training.terms.LOSS_TERMS`, by name
#: (the cluster method's term is :func:`crossreid.training.cluster.cluster_contrast_loss`).
LOSS_FUNCTIONS: dict[str, Callable[[StepTensors, TrainConfig], torch.Tensor]] = {
    "cls": _classification,
    "rec": _reconstruction,
    "dif": _difference,
    "mmd": _mmd,
    "ctr": _contrastive,
    "tri": _triplet,
}
_ARN_TERMS = tuple(term.name for term in LOSS_TERMS if "arn" in term.methods)
if tuple(LOSS_FUNCTIONS) != _ARN_TERMS:  # a term declared without a function, or the reverse
    raise ImportError(f"LOSS_FUNCTIONS {tuple(LOSS_FUNCTIONS)} do not match {_ARN_TERMS}")


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
        self.use_target = use_target
        self.use_pose = needs_part(config, "pose")
        self.use_decoder = needs_part(config, "decoder")
        self.use_logits = needs_part(config, "logits")
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
        self.terms = active_terms(config)
        self.timer: Callable[[str], contextlib.AbstractContextManager] = lambda name: (
            contextlib.nullcontext()
        )

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
        c, timer = self.config, self.timer
        self._inner.timer = timer
        seed = step_seed(c.seed, step, self.dist.rank, 0)
        torch.manual_seed(seed)  # dropout and any other global-RNG use in this step
        generator = torch.Generator().manual_seed(seed ^ 0x9E3779B9)
        positive = positive_permutation(pids, generator)
        if not self.use_target:
            target = None
        with timer("data_to_device"):
            batch = self._prepare(source, pids, target, positive, generator)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out = self.forward_module(
                batch.source, batch.pose_source, batch.positive, batch.target, batch.pose_target
            )
        batch.set_outputs(out)
        with timer("losses"):
            terms = {
                term.name: LOSS_FUNCTIONS[term.name](batch, c)
                for term in self.terms
                if not (term.name == "mmd" and batch.target is None)
            }
            weights = {term.name: term.weight(c) for term in self.terms}
            total = sum(weights[name] * value for name, value in terms.items())
        with timer("backward_optimizer"):
            values = optimise(
                total, terms, self.optimizer, self.scheduler, self.scaler, self.params, step
            )
        losses = {"total": values[0], **dict(zip(terms, values[2:], strict=True))}
        images = self._image_grids(batch) if keep_images else None
        return StepOutput(losses, values[1], images)

    def _prepare(
        self,
        source: torch.Tensor,
        pids: torch.Tensor,
        target: torch.Tensor | None,
        positive: torch.Tensor,
        generator: torch.Generator,
    ) -> StepTensors:
        """The batch on the device: memory format, target colour transfer, pose jitter."""
        c, dev = self.config, self.device
        source = source.to(dev, non_blocking=True)
        pids = pids.to(dev, non_blocking=True)
        if target is not None:
            target = target.to(dev, non_blocking=True)
        if c.channels_last:
            source = source.contiguous(memory_format=torch.channels_last)
            if target is not None:
                target = target.contiguous(memory_format=torch.channels_last)
        if target is not None and c.target_style_prob > 0:
            source = transfer_colour_statistics(source, target, generator, prob=c.target_style_prob)
        pose_source = pose_jitter(source, generator) if self.use_pose else source
        pose_target = (
            pose_jitter(target, generator) if self.use_pose and target is not None else None
        )
        return StepTensors({}, pids, positive.to(dev), source, target, pose_source, pose_target)

    def _image_grids(self, batch: StepTensors) -> dict[str, torch.Tensor]:
        """Input, positive, pose input and reconstructions of the first 8 images (TensorBoard)."""
        source, target, out, positive = batch.source, batch.target, batch.out, batch.positive
        n = min(8, source.shape[0])
        images = {
            "input": denormalize(source[:n].float()),
            "positive": denormalize(source[positive][:n].float()),
        }
        if self.use_pose:
            images["pose_input"] = denormalize(batch.pose_source[positive][:n].float())
        if "reconstruction" in out:
            images["reconstruction"] = denormalize(out["reconstruction"][:n].detach().float())
            if target is not None:
                b = source.shape[0]
                images["target_input"] = denormalize(target[:n].float())
                images["target_reconstruction"] = denormalize(
                    out["reconstruction"][b : b + n].detach().float()
                )
        return images
