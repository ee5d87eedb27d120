"""Tests of crossreid.losses: hand-computed values, gradient checks, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreid.errors import ConfigError
from crossreid.losses import (
    classification_loss,
    contrastive_loss,
    difference_loss,
    mmd_loss,
    reconstruction_loss,
    triplet_loss,
)


def _random(seed: int, *shape: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


# --- classification -------------------------------------------------------------------


def test_classification_hand_computed():
    # Sample 1: logits (0, ln 3) → p = (1/4, 3/4), target 1 → −ln(3/4) = 0.287682
    # Sample 2: logits (0, 0) → p = (1/2, 1/2), target 0 → ln 2 = 0.693147
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    targets = torch.tensor([1, 0])
    expected = (-math.log(0.75) + math.log(2.0)) / 2  # 0.490415
    assert classification_loss(logits, targets).item() == pytest.approx(expected, abs=1e-6)
    # ε = 0.2, K = 2: sample 1 targets (0.1, 0.9) → 0.1·ln 4 + 0.9·(−ln 3/4) = 0.397543;
    # sample 2 still ln 2 (uniform prediction). Mean 0.545345.
    smoothed = (0.1 * math.log(4.0) - 0.9 * math.log(0.75) + math.log(2.0)) / 2
    assert classification_loss(logits, targets, label_smoothing=0.2).item() == pytest.approx(
        smoothed, abs=1e-6
    )


def test_classification_gradcheck():
    logits = _random(0, 3, 4).requires_grad_()
    targets = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(
        lambda x: classification_loss(x, targets, label_smoothing=0.1), (logits,)
    )


# --- reconstruction -------------------------------------------------------------------


def test_reconstruction_hand_computed():
    reconstruction = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [3.0, 6.0]]]])
    # |differences| = 0, 2, 0, 2 → L1 mean 1; squares 0, 4, 0, 4 → L2 mean 2
    assert reconstruction_loss(reconstruction, target, kind="l1").item() == pytest.approx(1.0)
    assert reconstruction_loss(reconstruction, target, kind="l2").item() == pytest.approx(2.0)


def test_reconstruction_gradcheck():
    reconstruction = _random(1, 2, 3, 4, 2).requires_grad_()
    target = _random(2, 2, 3, 4, 2)
    for kind in ("l1", "l2"):
        assert torch.autograd.gradcheck(
            lambda x, kind=kind: reconstruction_loss(x, target, kind=kind), (reconstruction,)
        )


def test_reconstruction_rejects_bad_kind_and_shapes():
    image = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ConfigError, match="'huber'"):
        reconstruction_loss(image, image, kind="huber")
    with pytest.raises(ValueError, match="differs"):
        reconstruction_loss(image, torch.zeros(1, 3, 4, 2))


# --- difference -----------------------------------------------------------------------


def test_difference_hand_computed():
    # Rows after normalisation: a1 = (1, 0), a2 = (0, 1); p1 = (3, 4)/5 = (0.6, 0.8), p2 = (1, 0).
    # ÂᵀP̂ = a1ᵀp1 + a2ᵀp2 = [[0.6, 0.8], [0, 0]] + [[0, 0], [1, 0]] = [[0.6, 0.8], [1, 0]]
    # ‖·‖_F² = 0.36 + 0.64 + 1 = 2; "mean" divides by B² = 4 → 0.5.
    identity = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    pose = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert difference_loss(identity, pose, reduction="sum").item() == pytest.approx(2.0)
    assert difference_loss(identity, pose).item() == pytest.approx(0.5)


def test_difference_is_zero_for_orthogonal_inputs():
    # Columns of Â are (1, 1)/√2 and 0; columns of P̂ are ±(1, −1)/√5 and ±(2, −2)/√5:
    # every identity column is orthogonal (over the batch) to every pose column.
    identity = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    pose = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    assert difference_loss(identity, pose).item() == pytest.approx(0.0, abs=1e-12)


def test_difference_gradcheck():
    identity = _random(3, 4, 5).requires_grad_()
    pose = _random(4, 4, 3).requires_grad_()
    assert torch.autograd.gradcheck(difference_loss, (identity, pose))
    assert torch.autograd.gradcheck(
        lambda a, p: difference_loss(a, p, center=True), (identity, pose)
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 6), dims=st.integers(1, 5))
def test_difference_equals_frobenius_form_and_is_bounded(seed, batch, dims):
    identity = _random(seed, batch, dims)
    pose = _random(seed + 1, batch, dims + 1)
    correlation = torch.nn.functional.normalize(identity, dim=1).T @ torch.nn.functional.normalize(
        pose, dim=1
    )
    expected = correlation.pow(2).sum() / batch**2
    value = difference_loss(identity, pose)
    assert value.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    assert -1e-12 <= value.item() <= 1 + 1e-12


def test_difference_lower_bound_for_nonnegative_features_and_centering():
    # ReLU-like features: every Gram term is ≥ 0, so the diagonal alone gives ≥ 1/B.
    identity = _random(5, 8, 6).abs()
    pose = _random(6, 8, 6).abs()
    assert difference_loss(identity, pose).item() >= 1 / 8 - 1e-12
    centred = difference_loss(identity - identity.mean(0), pose - pose.mean(0))
    assert difference_loss(identity, pose, center=True).item() == pytest.approx(centred.item())


# --- MMD ------------------------------------------------------------------------------


def test_mmd_hand_computed():
    # One source (1, 0), one target (0, 1): d² = 2. σ = 1: k_st = e^(−2/2) = e^−1,
    # MMD² = 1 + 1 − 2e^−1 = 1.264241.
    source = torch.tensor([[1.0, 0.0]])
    target = torch.tensor([[0.0, 3.0]])  # scaled: rows are L2-normalised first
    assert mmd_loss(source, target, bandwidths=(1.0,)).item() == pytest.approx(
        2 - 2 * math.exp(-1), abs=1e-6
    )
    # σ ∈ {1, 2}: k_st = (e^−1 + e^(−2/8)) / 2 = 0.573340 → MMD² = 0.853320
    two = (math.exp(-1) + math.exp(-0.25)) / 2
    assert mmd_loss(source, target, bandwidths=(1.0, 2.0)).item() == pytest.approx(
        2 - 2 * two, abs=1e-6
    )


def test_mmd_hand_computed_unequal_batches():
    # S = {(1,0), (0,1)}, T = {(1,0)}, σ = 1, k(e1, e2) = e^−1:
    # mean K_ss = (2 + 2e^−1)/4, mean K_tt = 1, mean K_st = (1 + e^−1)/2
    # MMD² = (1 + e^−1)/2 + 1 − (1 + e^−1) = (1 − e^−1)/2 = 0.316060
    source = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[5.0, 0.0]])
    assert mmd_loss(source, target, bandwidths=(1.0,)).item() == pytest.approx(
        (1 - math.exp(-1)) / 2, abs=1e-6
    )


def test_mmd_gradcheck():
    source = _random(7, 3, 4).requires_grad_()
    target = _random(8, 2, 4).requires_grad_()
    assert torch.autograd.gradcheck(mmd_loss, (source, target))
    assert torch.autograd.gradcheck(
        lambda s, t: mmd_loss(s, t, bandwidths=(0.5, 3.0), normalize=False), (source, target)
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), m=st.integers(1, 6))
def test_mmd_is_nonnegative_and_zero_for_identical_sets(seed, n, m):
    source = _random(seed, n, 4)
    target = _random(seed + 1, m, 4)
    assert mmd_loss(source, target).item() >= -1e-12
    assert mmd_loss(source, source.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_mmd_rejects_bad_inputs():
    with pytest.raises(ValueError, match="feature sizes differ"):
        mmd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="bandwidths"):
        mmd_loss(torch.ones(2, 3), torch.ones(2, 3), bandwidths=())


# --- contrastive ----------------------------------------------------------------------


def test_contrastive_hand_computed():
    # f1 = (1, 0), f2 = (0, 1) share pid 0; f3 = (0.6, 0.8) has pid 1; margin 1.
    # positive pair (1,2): d² = 2                                  → positive mean 2
    # negatives: d²(1,3) = 0.4² + 0.8² = 0.8, d²(2,3) = 0.6² + 0.2² = 0.4
    #   (1 − √0.8)² + (1 − √0.4)² = 3.2 − 2(√0.8 + √0.4); mean = 1.6 − √0.8 − √0.4
    # total = 3.6 − √0.8 − √0.4 = 2.073117
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    pids = torch.tensor([0, 0, 1])
    expected = 3.6 - math.sqrt(0.8) - math.sqrt(0.4)
    assert contrastive_loss(features, pids, margin=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_zero_when_positives_coincide_and_negatives_beyond_margin():
    # after normalisation f1 = f2 = (1, 0) and f3 = f4 = (0, 1): negatives at √2 > 1
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    pids = torch.tensor([5, 5, 9, 9])
    assert contrastive_loss(features, pids, margin=1.0).item() == pytest.approx(0.0, abs=1e-6)
    # ... and not zero once the margin exceeds √2
    assert contrastive_loss(features, pids, margin=1.5).item() == pytest.approx(
        (1.5 - math.sqrt(2)) ** 2, abs=1e-6
    )


def test_contrastive_gradcheck():
    features = _random(9, 5, 3).requires_grad_()
    pids = torch.tensor([0, 0, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda f: contrastive_loss(f, pids, margin=1.2), (features,))


# --- triplet --------------------------------------------------------------------------


def test_triplet_hand_computed():
    # 1-D positions 0, 2 (pid 0), 2.5, 4 (pid 1), 10 (pid 2, no positive: not an anchor)
    # anchor 0:   hardest pos 2,   hardest neg 2.5 → 2 − 2.5 + 0.3 < 0 → 0
    # anchor 2:   hardest pos 2,   hardest neg 0.5 → 1.8
    # anchor 2.5: hardest pos 1.5, hardest neg 0.5 → 1.3
    # anchor 4:   hardest pos 1.5, hardest neg 2   → −0.2 → 0
    # mean over the 4 valid anchors = 3.1 / 4 = 0.775
    positions = torch.tensor([0.0, 2.0, 2.5, 4.0, 10.0])
    features = torch.stack((positions, torch.zeros(5)), dim=1)
    pids = torch.tensor([0, 0, 1, 1, 2])
    assert triplet_loss(features, pids, margin=0.3).item() == pytest.approx(0.775, abs=1e-5)


def test_triplet_without_valid_anchors_is_zero_with_gradient():
    features = _random(10, 3, 4).requires_grad_()
    loss = triplet_loss(features, torch.tensor([0, 1, 2]))  # no positives at all
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_triplet_gradcheck():
    features = _random(11, 6, 3).requires_grad_()
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda f: triplet_loss(f, pids, margin=5.0), (features,))
    assert torch.autograd.gradcheck(
        lambda f: triplet_loss(f, pids, margin=0.3, normalize=True), (features,)
    )


def test_pair_losses_reject_mismatched_pids():
    with pytest.raises(ValueError, match="pids"):
        contrastive_loss(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pids"):
        triplet_loss(torch.zeros(3, 2), torch.tensor([[0, 1, 2]]))
