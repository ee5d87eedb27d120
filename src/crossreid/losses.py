"""Training losses of the cross-domain network (design section 1), as pure tensor functions.

Every function takes tensors and returns a scalar tensor; shapes are in the docstrings
(``B`` batch, ``D`` feature size, ``K`` classes). All are vectorised: no Python loops over
samples or pairs.

=================  ==========================================================  ==========
loss               definition                                                  inputs
=================  ==========================================================  ==========
classification     cross-entropy (optional label smoothing)                    logits
reconstruction     mean absolute (``l1``) or squared (``l2``) error per pixel  images
difference         ‖Âᵀ P̂‖_F² / B² on row-normalised identity/pose vectors    vectors
mmd                biased multi-kernel MMD² on L2-normalised vectors           vectors
contrastive        mean_pos d² + mean_neg max(0, m − d)² on normalised vectors  vectors
triplet            batch-hard triplet on Euclidean distances                   vectors
=================  ==========================================================  ==========
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from crossreid.errors import ConfigError

__all__ = [
    "classification_loss",
    "contrastive_loss",
    "difference_loss",
    "mmd_loss",
    "reconstruction_loss",
    "triplet_loss",
    "DEFAULT_MMD_BANDWIDTHS",
]

#: Gaussian bandwidths σ for :func:`mmd_loss`, suited to unit vectors (squared distances
#: in [0, 4]): from σ = 0.1 (sensitive to fine structure between nearby points) to σ = 2
#: (almost linear in d², i.e. close to comparing the domain means).
DEFAULT_MMD_BANDWIDTHS: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0)


def _check_vectors(name: str, x: torch.Tensor) -> None:
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty [B, D] tensor, got shape {tuple(x.shape)}")


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[N, D]``, ``[M, D]`` → squared Euclidean distances ``[N, M]`` (clamped at 0)."""
    x_norm = x.pow(2).sum(dim=1, keepdim=True)
    y_norm = y.pow(2).sum(dim=1, keepdim=True)
    # The expansion ‖x‖² + ‖y‖² − 2 x·y can round slightly below zero.
    return (x_norm + y_norm.T - 2.0 * x @ y.T).clamp_min(0.0)


def _pair_masks(pids: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Same-identity and different-identity masks ``[B, B]``, both excluding the diagonal."""
    if pids.shape != (batch,):
        raise ValueError(f"pids must have shape [{batch}], got {tuple(pids.shape)}")
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(batch, dtype=torch.bool, device=pids.device)
    return same & ~eye, ~same


def _pair_inputs(
    features: torch.Tensor, pids: torch.Tensor, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked pair-loss inputs: ``(features [B, D]`` (L2-normalised rows when
    ``normalize``), positive mask ``[B, B]``, negative mask ``[B, B])``."""
    _check_vectors("features", features)
    positives, negatives = _pair_masks(pids, features.shape[0])
    if normalize:
        features = F.normalize(features, dim=1)
    return features, positives, negatives


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of source identity logits, averaged over the batch.

    Args:
        logits: ``[B, K]`` unnormalised scores.
        targets: ``[B]`` integer class indices in ``[0, K)``.
        label_smoothing: ε in [0, 1): the target distribution is ``(1 − ε)·onehot + ε/K``.
    """
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


_RECONSTRUCTION_ERRORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss,
    "l2": F.mse_loss,
}


def reconstruction_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, kind: str = "l1"
) -> torch.Tensor:
    """Mean per-element absolute (``"l1"``) or squared (``"l2"``) error.

    Both tensors are ``[B, 3, H, W]`` in the same value space (the decoder outputs
    mean/std-normalised images, so ``target`` is the normalised input). The mean runs over
    every element: batch, channel and pixel.
    """
    error = _RECONSTRUCTION_ERRORS.get(kind)
    if error is None:
        raise ConfigError(
            f"unknown reconstruction loss {kind!r}; expected one of "
            f"{', '.join(_RECONSTRUCTION_ERRORS)}"
        )
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"reconstruction shape {tuple(reconstruction.shape)} differs from target shape "
            f"{tuple(target.shape)}"
        )
    return error(reconstruction, target)


def difference_loss(
    identity_vectors: torch.Tensor,
    pose_vectors: torch.Tensor,
    reduction: str = "mean",
    center: bool = False,
) -> torch.Tensor:
    """Soft orthogonality between identity and pose vectors (Domain Separation Networks).

    With Â and P̂ the ``[B, D]`` inputs with each row L2-normalised, the loss is the squared
    Frobenius norm of their ``[D_id, D_pose]`` correlation over the batch, ``‖Âᵀ P̂‖_F²``,
    divided by ``B²`` when ``reduction="mean"`` (the default) and undivided for ``"sum"``.

    It is ≥ 0, and 0 exactly when every identity feature dimension is uncorrelated (over
    the batch) with every pose dimension. Since ``‖ÂᵀP̂‖_F² = Σ_{b,b'} (â_b·â_b')(p̂_b·p̂_b')``
    and every term lies in [−1, 1], the ``"mean"`` value lies in [0, 1] whatever the batch
    size, which keeps the loss weight meaningful across batch sizes. It is computed through
    that ``[B, B]`` Gram form, which costs ``O(B² D)`` instead of ``O(B D²)``.

    Non-negative inputs (ReLU features after max-pooling) have all Gram terms ≥ 0, so the
    diagonal alone bounds the loss below by ``1/B`` (``"mean"``). ``center=True`` first
    subtracts the batch mean of each input, as the DSN reference code does, which lets the
    loss reach 0 for such features.

    Args:
        identity_vectors: ``[B, D_id]``.
        pose_vectors: ``[B, D_pose]`` (same B).
        reduction: ``"mean"`` (divide by B²) or ``"sum"``.
        center: subtract the per-dimension batch mean before normalising rows.
    """
    _check_vectors("identity_vectors", identity_vectors)
    _check_vectors("pose_vectors", pose_vectors)
    batch = identity_vectors.shape[0]
    if pose_vectors.shape[0] != batch:
        raise ValueError(
            f"identity and pose batches differ: {batch} vs {pose_vectors.shape[0]} rows"
        )
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if center:
        identity_vectors = identity_vectors - identity_vectors.mean(dim=0, keepdim=True)
        pose_vectors = pose_vectors - pose_vectors.mean(dim=0, keepdim=True)
    identity = F.normalize(identity_vectors, dim=1)
    pose = F.normalize(pose_vectors, dim=1)
    total = ((identity @ identity.T) * (pose @ pose.T)).sum()
    return total / batch**2 if reduction == "mean" else total


def mmd_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    bandwidths: Sequence[float] = DEFAULT_MMD_BANDWIDTHS,
    normalize: bool = True,
) -> torch.Tensor:
    """Multi-kernel maximum mean discrepancy MMD² between two sets of vectors.

    Feature scaling: each row is L2-normalised first (``normalize=True``), so squared
    distances lie in [0, 4] and the bandwidths are independent of the feature scale. The
    kernel is the mean of Gaussians ``k(x, y) = mean_σ exp(−‖x − y‖² / (2σ²))`` over
    ``bandwidths``. The estimator is the biased (V-statistic) one,

        MMD² = mean_{i,i'} k(s_i, s_i') + mean_{j,j'} k(t_j, t_j') − 2 mean_{i,j} k(s_i, t_j),

    diagonal terms included: it is the squared RKHS distance between the two empirical
    mean embeddings, hence ≥ 0 (up to rounding) and exactly 0 for identical sets.

    Args:
        source: ``[N, D]`` (e.g. source identity vectors).
        target: ``[M, D]``; M may differ from N.
        bandwidths: Gaussian σ values (> 0).
        normalize: L2-normalise rows before the kernel.
    """
    _check_vectors("source", source)
    _check_vectors("target", target)
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            f"source and target feature sizes differ: {source.shape[1]} vs {target.shape[1]}"
        )
    sigmas = [float(sigma) for sigma in bandwidths]
    if not sigmas or min(sigmas) <= 0:
        raise ConfigError(f"MMD bandwidths must be positive numbers, got {bandwidths!r}")
    if normalize:
        source = F.normalize(source, dim=1)
        target = F.normalize(target, dim=1)
    n = source.shape[0]
    joint = torch.cat((source, target), dim=0)
    distances = _squared_distances(joint, joint)
    scales = torch.tensor([-0.5 / s**2 for s in sigmas], dtype=joint.dtype, device=joint.device)
    kernel = torch.exp(distances[None] * scales[:, None, None]).mean(dim=0)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2.0 * kernel[:n, n:].mean()


def contrastive_loss(
    features: torch.Tensor,
    pids: torch.Tensor,
    margin: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """Contrastive loss over all in-batch pairs.

    With ``d_ij`` the Euclidean distance between rows i and j (after L2-normalising rows
    when ``normalize``, so d ∈ [0, 2]), over the unordered pairs i < j:

        loss = mean_{pids equal} d_ij² + mean_{pids differ} max(0, margin − d_ij)²

    Each mean is over its own pair count; a term with no pairs contributes 0. It is 0 when
    every positive pair coincides and every negative pair is at least ``margin`` apart.

    Args:
        features: ``[B, D]``.
        pids: ``[B]`` integer identity labels.
        margin: distance beyond which negative pairs stop contributing.
        normalize: L2-normalise rows first.
    """
    features, positives, negatives = _pair_inputs(features, pids, normalize)
    squared = _squared_distances(features, features)
    # eps keeps the gradient of sqrt finite for coinciding negatives.
    distances = (squared + 1e-12).sqrt()
    # Both masks are symmetric, so full-matrix sums count each unordered pair twice; the
    # counts below are doubled too, which leaves the means over pairs i < j unchanged.
    positive_term = (squared * positives).sum() / positives.sum().clamp_min(1)
    hinge = (margin - distances).clamp_min(0.0).pow(2)
    negative_term = (hinge * negatives).sum() / negatives.sum().clamp_min(1)
    return positive_term + negative_term


def triplet_loss(
    features: torch.Tensor,
    pids: torch.Tensor,
    margin: float = 0.3,
    normalize: bool = False,
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al., 2017).

    For each anchor a: the farthest in-batch positive (same pid, a excluded) and the
    nearest negative, by Euclidean distance; loss = mean over anchors having both of
    ``max(0, d(a, p) − d(a, n) + margin)``; 0 if no anchor has both.

    Args:
        features: ``[B, D]`` (raw by default, as is usual with margin 0.3).
        pids: ``[B]`` integer identity labels.
        margin: required gap between the hardest negative and the hardest positive.
        normalize: L2-normalise rows first.
    """
    features, positives, negatives = _pair_inputs(features, pids, normalize)
    distances = (_squared_distances(features, features) + 1e-12).sqrt()
    hardest_positive = distances.masked_fill(~positives, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(~negatives, float("inf")).amin(dim=1)
    valid = positives.any(dim=1) & negatives.any(dim=1)
    # Invalid anchors give −inf/+inf differences; zero them before the mean.
    hinge = (hardest_positive - hardest_negative + margin).clamp_min(0.0)
    hinge = torch.where(valid, hinge, torch.zeros_like(hinge))
    return hinge.sum() / valid.sum().clamp_min(1)
