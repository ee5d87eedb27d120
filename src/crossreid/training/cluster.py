"""The pseudo-label stage (``method: cluster``): cluster the target, train on the clusters.

Every ``cluster_every`` steps (one "epoch"; by default one pass over the target's training
images) the stage

1. extracts the identity vectors of the target training split (:mod:`crossreid.inference`;
   optionally mirrored and with camera-wise BatchNorm), L2-normalised;
2. computes the k-reciprocal Jaccard distance (:func:`~crossreid.evaluation.jaccard_distance`)
   and clusters it with DBSCAN (:func:`~crossreid.evaluation.cluster_pseudo_labels`);
   outliers are dropped for the epoch, and with ``cluster_reliability`` also the clusters
   and samples SpCL's criterion finds unreliable
   (:func:`~crossreid.evaluation.reliable_pseudo_labels`);
3. builds the centroid memory: one L2-normalised mean feature per cluster;

and every step draws a PK batch over the pseudo-identities (each one's K images from as
many of its cameras as it has with ``cluster_camera_aware``) and minimises the cross-entropy
of its identity vectors against the memory at temperature ``memory_temperature`` (the
cluster-contrast loss of Dai et al., 2021), then moves each sample's centroid towards it
(``m ← momentum·m + (1 − momentum)·f``, renormalised). With the source classification kept
(``w_cls > 0``) a labelled source batch goes with each step, through the same identity
encoder: with the target images (one batch for BatchNorm), or apart from them with
``cluster_split_bn``. With ``cluster_mixup`` the step's target images are blended with a
permutation of themselves (mixup, one weight per step) and the cluster-contrast loss mixes
the two pseudo-labels' losses by that weight; the memory then moves with the unblended
images' vectors (one more forward pass, without gradients).

Target identity labels are never read: records keep only their path and camera. The
checkpoint holds the current pseudo-labels and memory, so a run resumed mid-epoch continues
exactly.

Under ``torchrun`` rank 0 clusters (extraction, Jaccard distance, DBSCAN) while the other
ranks wait, and broadcasts the labels and the memory; each rank then draws its own batches,
the gradients are averaged by DistributedDataParallel, and every rank moves the memory with
the batches of all ranks (gathered, in rank order), so the memories stay identical.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.distributed
import torch.nn.functional as F
from torch import nn

from crossreid import losses
from crossreid.data.base import ImageRecord
from crossreid.data.loaders import build_source_loader, infinite_batches
from crossreid.data.transforms import transfer_colour_statistics
from crossreid.errors import ClusteringError, ConfigError
from crossreid.evaluation.clustering import (
    PseudoLabels,
    cluster_pseudo_labels,
    describe_distances,
    estimate_eps,
    reliable_pseudo_labels,
)
from crossreid.evaluation.jaccard import jaccard_distance
from crossreid.inference import extract_features
from crossreid.training.config import TrainConfig
from crossreid.training.data import TrainingData, labelled_source_loader, loader_options
from crossreid.training.step import StepOutput, optimise, step_seed
from crossreid.training.terms import active_terms
from crossreid.utils.distributed import DistInfo

logger = logging.getLogger(__name__)

__all__ = ["ClusterMethod", "cluster_contrast_loss", "mixup_batch", "update_memory"]


def cluster_contrast_loss(
    features: torch.Tensor, labels: torch.Tensor, memory: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of L2-normalised ``features [B, C]`` against the centroids
    ``memory [K, C]`` (rows L2-normalised) at ``temperature``; ``labels [B]`` in ``0..K-1``."""
    logits = F.normalize(features, dim=1) @ memory.t() / temperature
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def update_memory(
    memory: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, momentum: float
) -> None:
    """Move each sample's centroid towards it, in batch order, and renormalise (in place)."""
    features = F.normalize(features.detach().float(), dim=1)
    for feature, label in zip(features, labels.tolist(), strict=True):
        centroid = momentum * memory[label] + (1.0 - momentum) * feature
        memory[label] = centroid / centroid.norm().clamp_min(1e-12)


#: Salt of the mixup draws, so that they do not share a stream with the step's other draws.
_MIXUP_SALT = 0x5EED1234


def mixup_batch(
    images: torch.Tensor, alpha: float, seed: int
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Mixup (Zhang et al., ICLR 2018) of a batch with a permutation of itself.

    Returns ``lam * images + (1 - lam) * images[perm]``, ``lam`` drawn from Beta(``alpha``,
    ``alpha``) and ``perm`` a random permutation of the batch (on the images' device), both
    from ``seed`` alone (so a resumed run draws the same). A regulariser for noisy labels: a
    blend of two pseudo-identities cannot be fitted by memorising either image's label.
    """
    lam = float(np.random.default_rng(seed ^ _MIXUP_SALT).beta(alpha, alpha))
    generator = torch.Generator().manual_seed(seed ^ _MIXUP_SALT)
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    return lam * images + (1.0 - lam) * images[perm], lam, perm


class _StageForward(nn.Module):
    """The stage's forward as one module, so DistributedDataParallel can wrap it: the
    identity vectors of a batch and, with the source classification, the logits of its
    last rows (the source images after the first ``count``).

    With ``split`` the first ``count`` rows (the target images) and the others (the source
    images) go through the encoder separately, so in training mode BatchNorm normalises
    each domain by its own batch statistics (as camera-wise BatchNorm, when on, does for
    each target camera when the stage clusters and when the model is evaluated).
    """

    def __init__(self, model: nn.Module, classify: bool, split: bool = False) -> None:
        super().__init__()
        self.model, self.classify, self.split = model, classify, split

    def forward(self, images: torch.Tensor, count: int) -> tuple[torch.Tensor, Any]:
        if self.split and 0 < count < images.shape[0]:
            _, target = self.model.encode_identity(images[:count])
            _, source = self.model.encode_identity(images[count:])
            vectors = torch.cat((target, source))
        else:
            _, vectors = self.model.encode_identity(images)
        logits = self.model.classify(vectors[count:]) if self.classify else None
        return vectors, logits


def _gather_from_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` of every rank (same shape on each), concatenated in rank order."""
    parts = [torch.empty_like(values) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, values.contiguous())
    return torch.cat(parts)


class ClusterMethod:
    """The pseudo-label stage as a training method (see the module docstring)."""

    def __init__(
        self,
        config: TrainConfig,
        data: TrainingData,
        model: nn.Module,
        device: torch.device,
        dist: DistInfo,
    ) -> None:
        if data.target_records is None:
            raise ConfigError("method cluster needs the target's training split")
        self.config, self.model, self.device, self.dist = config, model, device, dist
        # Unlabelled: only the path and camera of each target image are kept.
        self.records = [ImageRecord(r.path, -1, r.camid) for r in data.target_records]
        if len(self.records) < config.cluster_min_samples:
            raise ClusteringError(
                f"the target training split has {len(self.records)} images, fewer than "
                f"cluster_min_samples={config.cluster_min_samples}"
            )
        self.steps_per_epoch = config.cluster_every or math.ceil(
            len(self.records) / config.batch_size
        )
        self.labels: np.ndarray | None = None  # per record, -1: outlier or unreadable
        self.memory: torch.Tensor | None = None
        self.epoch_start = 0
        self.eps = float("nan")
        # SpCL's independence threshold, set at the stage's first clustering (rank 0).
        self.independence: float | None = None
        self._stream = None
        # Source classification kept during the stage (w_cls > 0): a PK batch of labelled
        # source images per step, in the target's colours with target_style_prob, through
        # the same identity encoder and the ARN stage's classifier.
        self.use_source = any(term.name == "cls" for term in active_terms(config))
        self.source_loader = None
        self._source = None
        if self.use_source:
            self.source_loader = labelled_source_loader(config, data, dist)

    def prepare(
        self,
        config: TrainConfig,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        self.config, self.optimizer, self.scheduler, self.scaler = (
            config,
            optimizer,
            scheduler,
            scaler,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.forward_module: nn.Module = _StageForward(
            self.model, self.use_source, split=config.cluster_split_bn
        )
        if self.dist.is_distributed:
            self.forward_module = nn.parallel.DistributedDataParallel(
                self.forward_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )

    def start(self, start_step: int) -> None:
        if self.source_loader is not None:
            self._source = infinite_batches(self.source_loader, start_step=start_step)
        if self.labels is not None:  # resumed: continue the saved epoch's stream
            self._open_stream(start_step - self.epoch_start)

    # -- clustering --------------------------------------------------------------------------
    def _recluster(self, state: Any) -> None:
        """New pseudo-labels and memory (on rank 0, then broadcast under ``torchrun``)."""
        outcome = None
        if self.dist.is_main:
            try:
                outcome = self._cluster(state)
            except BaseException as error:
                # The other ranks stop too, with the same message, instead of waiting.
                self._broadcast(None, f"rank 0: {str(error) or type(error).__name__}")
                raise
        labels, memory, eps = self._broadcast(outcome)
        self.labels, self.memory, self.eps = labels, memory.to(self.device), eps
        self.epoch_start = state.step
        self._open_stream(0)

    def _broadcast(
        self, outcome: tuple[np.ndarray, torch.Tensor, float] | None, failure: str = ""
    ) -> tuple[np.ndarray, torch.Tensor, float]:
        """Rank 0's ``(labels, memory, eps)`` on every rank. ``None`` from rank 0 says it
        failed (its own error is raised there): the other ranks raise
        :class:`ClusteringError` with its message ``failure``."""
        if not self.dist.is_distributed:
            return outcome
        header = torch.zeros(4, dtype=torch.float64, device=self.device)
        if outcome is not None:
            labels, memory, eps = outcome
            header += torch.tensor([1.0, memory.shape[0], memory.shape[1], eps]).to(header)
        torch.distributed.broadcast(header, src=0)
        ok, clusters, width, eps = header.tolist()
        if not ok:
            message = [failure]
            torch.distributed.broadcast_object_list(message, src=0, device=self.device)
            if self.dist.is_main:
                return outcome
            raise ClusteringError(message[0])
        if not self.dist.is_main:
            labels = np.empty(len(self.records), dtype=np.int64)
            memory = torch.empty(int(clusters), int(width), dtype=torch.float32)
        shared = torch.from_numpy(labels).to(self.device)
        torch.distributed.broadcast(shared, src=0)
        memory = memory.to(self.device)
        torch.distributed.broadcast(memory, src=0)
        return shared.cpu().numpy(), memory, eps

    def _cluster(self, state: Any) -> tuple[np.ndarray, torch.Tensor, float]:
        """Extract, cluster and build the centroid memory: ``(labels, memory, eps)``."""
        c = self.config
        extracted = extract_features(
            self.model, self.records, c.image_size, batch_size=c.eval_batch_size,
            device=self.device, flip=c.cluster_flip, workers=c.workers,
            channels_last=c.channels_last, desc="cluster", engine=c.engine,
            camera_bn=self.records if c.cluster_camera_bn else None,
        )  # fmt: skip
        features = extracted.features / np.maximum(
            np.linalg.norm(extracted.features, axis=1, keepdims=True), 1e-12
        )
        distance = jaccard_distance(features, k1=c.cluster_k1, k2=c.cluster_k2)
        eps = c.cluster_eps if c.cluster_eps is not None else estimate_eps(distance)
        pseudo = cluster_pseudo_labels(distance, eps, c.cluster_min_samples)
        unreliable = None
        if c.cluster_reliability is not None:
            reliable = reliable_pseudo_labels(
                distance, pseudo, eps, c.cluster_min_samples, c.cluster_reliability,
                self.independence,
            )  # fmt: skip
            pseudo, unreliable = reliable.pseudo, reliable.unreliable
            self.independence = reliable.independence_threshold
        self._check_enough(pseudo, distance, eps, unreliable)
        index = {path: i for i, path in enumerate(r.path for r in self.records)}
        labels = np.full(len(self.records), -1, dtype=np.int64)
        labels[[index[p] for p in extracted.paths]] = pseudo.labels
        kept = pseudo.labels >= 0
        centroids = torch.zeros(pseudo.num_clusters, features.shape[1], dtype=torch.float32)
        centroids.index_add_(
            0, torch.from_numpy(pseudo.labels[kept]), torch.from_numpy(features[kept])
        )
        self._log(state, pseudo, eps, unreliable)
        return labels, F.normalize(centroids, dim=1), eps

    def _check_enough(
        self, pseudo: PseudoLabels, distance, eps: float, unreliable: int | None
    ) -> None:
        # Each rank's P x K batch has its own P pseudo-identities.
        per_rank = self.config.batch_size // self.config.num_instances
        identities = per_rank * self.dist.world_size
        if pseudo.num_clusters < identities:
            ranks = (
                f" ({per_rank} per rank x {self.dist.world_size})" if identities > per_rank else ""
            )
            found = "DBSCAN" if unreliable is None else "DBSCAN and the reliability criterion"
            dropped = "" if unreliable is None else f", {unreliable} of them dropped as unreliable"
            remedy = "" if unreliable is None else ", a smaller cluster_reliability"
            raise ClusteringError(
                f"{found} (eps {eps:.3f}) left {pseudo.num_clusters} clusters "
                f"({pseudo.num_outliers} outliers{dropped}, largest {pseudo.largest}), fewer than "
                f"the {identities} pseudo-identities a batch needs{ranks}; set cluster_eps (larger "
                f"when most images are outliers, smaller when clusters merge){remedy} or a smaller "
                f"batch ({describe_distances(distance)})"
            )

    def _log(self, state: Any, pseudo: PseudoLabels, eps: float, unreliable: int | None) -> None:
        values = {
            "clusters": pseudo.num_clusters,
            "outliers": pseudo.num_outliers,
            "largest": pseudo.largest,
            "eps": eps,
        }
        if unreliable is not None:  # counted in the outliers too
            values["unreliable"] = unreliable
        state.run_logger.scalars(state.step, values, prefix="cluster/")
        state.run_logger.record(state.step, "cluster", values)
        message = (
            f"step {state.step}: {pseudo.num_clusters} clusters, {pseudo.num_outliers} "
            f"outliers{'' if unreliable is None else f' ({unreliable} unreliable)'}, "
            f"largest {pseudo.largest} (eps {eps:.3f})"
        )
        if state.bar is not None:
            state.bar.write(message)
        logger.info(message)

    def _open_stream(self, offset: int) -> None:
        keep = np.flatnonzero(self.labels >= 0)
        records = [ImageRecord(self.records[i].path, int(self.labels[i]), self.records[i].camid)
                   for i in keep]  # fmt: skip
        options = loader_options(self.config, self.dist)
        # Each epoch's batches are a function of (seed, the step the epoch started at).
        options["seed"] = step_seed(self.config.seed, self.epoch_start, 0, 7) % (2**31)
        loader = build_source_loader(
            records, self.config.image_size, self.config.batch_size, self.config.num_instances,
            camera_aware=self.config.cluster_camera_aware, **options,
        )  # fmt: skip
        self._stream = infinite_batches(loader, start_step=offset)

    # -- one step ----------------------------------------------------------------------------
    def step(self, state: Any, keep_images: bool) -> StepOutput:
        c = self.config
        if self._stream is None or state.step - self.epoch_start >= self.steps_per_epoch:
            self._recluster(state)
            self.model.train()
        images, labels, _, _ = next(self._stream)
        seed = step_seed(c.seed, state.step, self.dist.rank, 0)
        torch.manual_seed(seed)  # dropout etc.
        images, labels = images.to(self.device), labels.to(self.device)
        count = images.shape[0]
        source = None
        if self.use_source:
            source, pids, _, _ = next(self._source)
            source, pids = source.to(self.device), pids.to(self.device)
            if c.target_style_prob > 0:
                generator = torch.Generator().manual_seed(seed ^ 0x9E3779B9)
                source = transfer_colour_statistics(
                    source, images, generator, prob=c.target_style_prob
                )
        clean = mix = None
        if c.cluster_mixup > 0:
            # The memory moves with the unblended images' vectors, so that each centroid
            # stays on the images of its cluster.
            with torch.no_grad(), self._autocast():
                clean = self.model.encode_identity(images)[1].float()
            images, lam, perm = mixup_batch(images, c.cluster_mixup, seed)
            mix = (lam, perm)
        if source is not None:
            images = torch.cat((images, source))
        if c.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            vectors, logits = self.forward_module(images, count)
        vectors = vectors.float()
        ccl = cluster_contrast_loss(vectors[:count], labels, self.memory, c.memory_temperature)
        if mix is not None:  # each blended image is lam of its own cluster, 1 - lam of perm's
            lam, perm = mix
            ccl = lam * ccl + (1.0 - lam) * cluster_contrast_loss(
                vectors[:count], labels[perm], self.memory, c.memory_temperature
            )
        terms = {"ccl": ccl}
        if logits is not None:
            terms["cls"] = losses.classification_loss(
                logits.float(), pids, label_smoothing=c.label_smoothing
            )
        total = sum(getattr(c, f"w_{name}") * value for name, value in terms.items())
        values = optimise(
            total, terms, self.optimizer, self.scheduler, self.scaler, self.params, state.step
        )
        batch = (vectors[:count] if clean is None else clean).detach()
        if self.dist.is_distributed:  # every rank's samples, so the memories stay equal
            batch, labels = _gather_from_ranks(batch), _gather_from_ranks(labels)
        update_memory(self.memory, batch, labels, c.memory_momentum)
        return StepOutput(
            {"total": values[0], **dict(zip(terms, values[2:], strict=True))}, values[1], None
        )

    def _autocast(self):
        """Mixed precision in the stage's forwards when the run uses it (AMP on CUDA)."""
        return torch.autocast(
            self.device.type, dtype=torch.float16, enabled=self.scaler is not None
        )

    # -- checkpoint --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.labels is None:
            return {}
        return {
            "labels": torch.from_numpy(self.labels),
            "memory": self.memory.detach().cpu(),
            "epoch_start": int(self.epoch_start),
            "eps": float(self.eps),
            **({} if self.independence is None else {"independence": self.independence}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.labels = state["labels"].numpy().astype(np.int64)
        self.memory = state["memory"].to(self.device)
        self.epoch_start = int(state["epoch_start"])
        self.eps = float(state["eps"])
        self.independence = state.get("independence")
