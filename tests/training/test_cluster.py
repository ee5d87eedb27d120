"""Tests of crossreid.training.cluster: the pseudo-label stage (``method: cluster``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from crossreid.errors import ClusteringError, ConfigError
from crossreid.evaluation.clustering import PseudoLabels, Reliability
from crossreid.training import cluster as cluster_module
from crossreid.training import data as training_data
from crossreid.training.cluster import cluster_contrast_loss, mixup_batch, update_memory
from crossreid.training.trainer import train


def test_cluster_contrast_loss_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised: the two unit vectors
    memory = torch.eye(2)
    loss = cluster_contrast_loss(features, torch.tensor([0, 1]), memory, temperature=0.5)
    # logits [[2, 0], [0, 2]]: each sample's cross-entropy is log(1 + e^-2)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_memory_moves_each_centroid_towards_its_samples_in_order():
    memory = torch.eye(2)
    update_memory(memory, torch.tensor([[0.0, 3.0], [5.0, 0.0]]), torch.tensor([0, 0]), 0.1)
    # first [0.1, 0.9] / |.|, then 0.1 * that + 0.9 * [1, 0], renormalised
    first = torch.tensor([0.1, 0.9]) / math.hypot(0.1, 0.9)
    second = 0.1 * first + torch.tensor([0.9, 0.0])
    assert torch.allclose(memory[0], second / second.norm(), atol=1e-6)
    assert torch.equal(memory[1], torch.tensor([0.0, 1.0]))  # untouched


def test_mixup_blends_the_batch_with_a_permutation_drawn_from_the_seed():
    images = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 1, 3, 1)
    mixed, lam, perm = mixup_batch(images, 0.5, seed=7)
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == [0, 1, 2, 3]
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm])
    again, lam_again, perm_again = mixup_batch(images, 0.5, seed=7)  # a resumed step: the same
    assert torch.equal(again, mixed) and lam_again == lam and torch.equal(perm_again, perm)
    draws = {round(mixup_batch(images, 0.5, seed=s)[1], 6) for s in range(20)}
    assert len(draws) == 20  # another step, another lam
    # Beta(a, a) has mean 1/2 and, for small a, most of its mass near 0 and 1.
    lams = np.array([mixup_batch(images, 0.2, seed=s)[1] for s in range(400)])
    assert abs(lams.mean() - 0.5) < 0.06 and ((lams < 0.1) | (lams > 0.9)).mean() > 0.5


class _TinyEncoder(torch.nn.Module):
    """encode_identity / classify as the stage calls them: BatchNorm over the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(3)
        self.head = torch.nn.Linear(3, 2)

    def encode_identity(self, images):
        vectors = self.norm(images.flatten(1))
        return None, vectors

    def classify(self, vectors):
        return self.head(vectors)


@pytest.mark.parametrize("split", [False, True])
def test_split_batchnorm_normalises_each_domain_by_its_own_statistics(split):
    target = torch.tensor([[1.0, 2, 3], [3, 2, 1]])
    source = torch.tensor([[10.0, 0, 5], [20, 4, 5], [30, 8, 5]])
    forward = cluster_module._StageForward(_TinyEncoder().train(), classify=True, split=split)
    vectors, logits = forward(torch.cat((target, source)), count=2)
    assert vectors.shape == (5, 3) and logits.shape == (3, 2)
    # Per domain, BatchNorm of two target rows gives +-1 where they differ and 0 where not.
    alone = torch.tensor([[-1.0, 0, 1], [1, 0, -1]])
    assert torch.allclose(vectors[:2], alone, atol=1e-3) == split
    if split:  # the source rows, normalised among themselves: [-1.22, 0, 1.22] per column
        expected = torch.tensor([-1.0, 0, 1]) * math.sqrt(1.5)
        assert torch.allclose(vectors[2:, 0], expected, atol=1e-3)
        assert torch.allclose(vectors[2:, 2], torch.zeros(3), atol=1e-3)


@pytest.fixture
def arn_run(tmp_path, tiny_config):
    # In the test's own folder: deleted when the test passes (a checkpoint is ~180 MB).
    out = tmp_path / "arn"
    train(tiny_config(out, max_steps=4), progress=False)
    return out


def _stage(tiny_config, out, arn_run, **overrides):
    values = dict(
        method="cluster", init_from=str(arn_run), max_steps=6, cluster_every=3, cluster_k1=4,
        cluster_min_samples=2, cluster_eps=0.6, schedule="step", milestones=(5,),
        warmup_steps=1, eval_every=6, batch_size=4,  # P = 2 pseudo-identities a batch
    )  # fmt: skip
    values.update(overrides)
    return tiny_config(out, **values)


def test_stage_clusters_every_epoch_logs_and_trains(tmp_path, tiny_config, arn_run):
    result = train(_stage(tiny_config, tmp_path / "s", arn_run), progress=False)
    # Source classification is kept during the stage by default (w_cls 1).
    assert result.steps == 6 and set(result.history[0]) == {"total", "ccl", "cls"}
    assert all(h["total"] == pytest.approx(h["ccl"] + h["cls"], rel=1e-5) for h in result.history)
    lines = [json.loads(x) for x in (tmp_path / "s/metrics.jsonl").read_text().splitlines()]
    clusterings = [x for x in lines if x.get("kind") == "cluster"]
    assert [x["step"] for x in clusterings] == [0, 3]
    assert all(x["clusters"] >= 2 and x["eps"] == 0.6 for x in clusterings)
    assert [x["step"] for x in lines if "kind" not in x] == [6]
    # The identity encoder and the source classifier are trained; the pose encoder and the
    # decoder are not.
    assert not any(p.requires_grad for p in result.model.decoder.parameters())
    assert all(p.requires_grad for p in result.model.classifier.parameters())
    start = torch.load(arn_run / "checkpoints/last.pt", weights_only=True)["model"]
    trained = result.model.state_dict()
    assert not torch.equal(start["classifier.weight"], trained["classifier.weight"])
    frozen = [k for k in start if k.startswith(("decoder.", "pose_encoder."))]
    assert frozen and all(torch.equal(start[k], trained[k]) for k in frozen if "running" not in k)


def test_stage_without_source_classification_trains_on_the_clusters_only(
    tmp_path, tiny_config, arn_run
):
    result = train(_stage(tiny_config, tmp_path / "s", arn_run, w_cls=0.0), progress=False)
    assert set(result.history[0]) == {"total", "ccl"}
    assert all(h["total"] == pytest.approx(h["ccl"], rel=1e-6) for h in result.history)
    assert not any(p.requires_grad for p in result.model.classifier.parameters())


def test_stage_with_split_batchnorm_trains_differently(tmp_path, tiny_config, arn_run):
    mixed = train(_stage(tiny_config, tmp_path / "a", arn_run, max_steps=2), progress=False)
    split = _stage(tiny_config, tmp_path / "b", arn_run, max_steps=2, cluster_split_bn=True)
    separate = train(split, progress=False)
    assert set(separate.history[0]) == {"total", "ccl", "cls"}
    # The first clustering is the same (the same model extracts); the losses are not.
    assert separate.history[0]["total"] != mixed.history[0]["total"]


@pytest.mark.parametrize("options", [{}, {"cluster_mixup": 0.5}], ids=["plain", "mixup"])
def test_stage_resumes_mid_epoch_exactly(tmp_path, tiny_config, arn_run, options):
    straight = train(_stage(tiny_config, tmp_path / "a", arn_run, **options), progress=False)
    train(_stage(tiny_config, tmp_path / "b", arn_run, **options, max_steps=4), progress=False)
    resume = {"resume": str(tmp_path / "b"), "init_from": None}
    resumed = train(
        _stage(tiny_config, tmp_path / "b", arn_run, **options, **resume), progress=False
    )
    assert [h["total"] for h in resumed.history] == [h["total"] for h in straight.history[4:]]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stage_with_reliability_logs_its_drops_and_resumes_exactly(
    tmp_path, tiny_config, arn_run, monkeypatch
):
    # Clusterings at steps 0, 3 and 6; the run stopped at 4 and resumed must reuse the first
    # clustering's independence threshold at step 6, from the checkpoint.
    thresholds = []

    def spy(*args, **kwargs):
        thresholds.append(args[5])
        return real(*args, **kwargs)

    real = cluster_module.reliable_pseudo_labels
    monkeypatch.setattr(cluster_module, "reliable_pseudo_labels", spy)
    options = {"cluster_reliability": 0.02, "max_steps": 8}
    straight = train(_stage(tiny_config, tmp_path / "a", arn_run, **options), progress=False)
    first = thresholds[1]
    assert thresholds == [None, first, first] and first is not None
    lines = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    clusterings = [x for x in lines if x.get("kind") == "cluster"]
    assert [x["step"] for x in clusterings] == [0, 3, 6]
    assert all(0 <= x["unreliable"] <= x["outliers"] for x in clusterings)
    saved = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)
    assert 0 <= saved["method_state"]["independence"] <= 1

    stopped = {**options, "max_steps": 4}
    train(_stage(tiny_config, tmp_path / "b", arn_run, **stopped), progress=False)
    resume = {"resume": str(tmp_path / "b"), "init_from": None}
    thresholds.clear()
    resumed = train(
        _stage(tiny_config, tmp_path / "b", arn_run, **options, **resume), progress=False
    )
    assert thresholds == [first]  # step 6's clustering, after the resume at step 4
    assert [h["total"] for h in resumed.history] == [h["total"] for h in straight.history[4:]]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_stage_with_camera_aware_batches(tmp_path, tiny_config, arn_run, monkeypatch):
    # The sampler's camera cycling is tested in tests/data/test_samplers.py; here the
    # option reaches the pseudo-label loader (not the source one) and the stage trains.
    built = []

    def spy(records, *args, **kwargs):
        built.append(kwargs.get("camera_aware", False))
        return real(records, *args, **kwargs)

    real = cluster_module.build_source_loader
    monkeypatch.setattr(cluster_module, "build_source_loader", spy)  # pseudo-label batches
    monkeypatch.setattr(training_data, "build_source_loader", spy)  # source batches
    stage = _stage(tiny_config, tmp_path / "s", arn_run, max_steps=3, cluster_camera_aware=True)
    result = train(stage, progress=False)
    assert result.steps == 3 and all(math.isfinite(h["total"]) for h in result.history)
    assert built == [False, True]  # the source loader, then the pseudo-label loader


def test_gem_stage_starts_from_a_max_pooling_run(tmp_path, tiny_config, arn_run):
    # init_from loads every weight of the ARN run; GeM's exponent is new, starts at 3 and
    # is trained.
    stage = _stage(tiny_config, tmp_path / "s", arn_run, max_steps=2, pooling="gem")
    result = train(stage, progress=False)
    assert result.steps == 2 and all(math.isfinite(h["total"]) for h in result.history)
    p = result.model.identity_encoder.pool.p.item()
    assert math.isfinite(p) and p != 3.0
    start = torch.load(arn_run / "checkpoints/last.pt", weights_only=True)["model"]
    trained = result.model.state_dict()
    assert set(trained) - set(start) == {"identity_encoder.pool.p"}
    pose = [k for k in start if k.startswith("pose_encoder.") and "running" not in k]
    assert pose and all(torch.equal(start[k], trained[k]) for k in pose)
    saved = torch.load(tmp_path / "s/checkpoints/last.pt", weights_only=True)
    assert saved["config"]["model"]["pooling"] == "gem"


def test_stage_with_mixup_mixes_the_two_labels_losses(tmp_path, tiny_config, arn_run, monkeypatch):
    split = {"max_steps": 3, "cluster_split_bn": True}  # target images normalised apart
    plain = train(_stage(tiny_config, tmp_path / "a", arn_run, **split), progress=False)
    mixed = train(
        _stage(tiny_config, tmp_path / "b", arn_run, cluster_mixup=0.5, **split), progress=False
    )
    assert set(mixed.history[0]) == {"total", "ccl", "cls"}
    assert [h["ccl"] for h in mixed.history] != [h["ccl"] for h in plain.history]
    # With lam = 1 the blend is the batch itself and the permuted labels weigh 0: the losses
    # and the memory (moved with the unblended images' vectors, which with the target images
    # apart for BatchNorm are the training forward's) are the plain stage's.
    real_draw = cluster_module.mixup_batch
    monkeypatch.setattr(
        cluster_module, "mixup_batch", lambda x, a, s: (x, 1.0, real_draw(x, a, s)[2])
    )
    identity = train(
        _stage(tiny_config, tmp_path / "c", arn_run, cluster_mixup=0.5, **split), progress=False
    )
    assert [h["total"] for h in identity.history] == [h["total"] for h in plain.history]


def test_stage_never_reads_target_labels(tmp_path, tiny_config, arn_run, monkeypatch):
    honest = train(_stage(tiny_config, tmp_path / "a", arn_run, max_steps=3), progress=False)
    real = training_data.resolve_dataset

    def scrambled(spec, data_root, **kwargs):
        dataset = real(spec, data_root, **kwargs)
        if spec.startswith("synthetic:B"):
            pids = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
            dataset.train = [r._replace(pid=p) for r, p in zip(dataset.train, pids, strict=False)]
        return dataset

    monkeypatch.setattr(training_data, "resolve_dataset", scrambled)
    blind = train(_stage(tiny_config, tmp_path / "b", arn_run, max_steps=3), progress=False)
    assert [h["total"] for h in blind.history] == [h["total"] for h in honest.history]


def test_a_clustering_without_enough_clusters_stops_with_one_line(tmp_path, tiny_config, arn_run):
    with pytest.raises(
        ClusteringError, match=r"eps=0\.01, min_samples=4 on 24 samples: .* 1% at \d"
    ):
        stage = _stage(
            tiny_config, tmp_path / "s", arn_run, cluster_eps=0.01, cluster_min_samples=4
        )
        train(stage, progress=False)


def test_too_few_reliable_clusters_stop_with_one_line_naming_the_criterion(
    tmp_path, tiny_config, arn_run, monkeypatch
):
    def one_cluster(distance, pseudo, *args):
        labels = np.where(pseudo.labels == 0, 0, -1)
        kept = PseudoLabels(labels, 1, int((labels < 0).sum()), int((labels == 0).sum()))
        return Reliability(kept, int((pseudo.labels > 0).sum()), 0.5)

    monkeypatch.setattr(cluster_module, "reliable_pseudo_labels", one_cluster)
    stage = _stage(tiny_config, tmp_path / "s", arn_run, cluster_reliability=0.02)
    message = (
        r"^DBSCAN and the reliability criterion \(eps 0\.600\) left 1 clusters \(\d+ outliers, "
        r"\d+ of them dropped as unreliable, largest \d+\), fewer than the 2 pseudo-identities "
        r".*a smaller cluster_reliability or a smaller batch \(stored distances"
    )
    with pytest.raises(ClusteringError, match=message):
        train(stage, progress=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cluster_eps": 1.5}, "cluster_eps must be in"),
        ({"cluster_k1": 0}, "cluster_k1 must be >= 1"),
        ({"memory_momentum": 1.0}, "memory_momentum"),
        ({"mode": "source-only"}, "method cluster trains on the target"),
        ({"w_ccl": 0.0, "w_cls": 0.0}, "w_cls, w_ccl are all 0"),
        ({"w_ccl": 0.0}, "method cluster needs w_ccl > 0"),
        ({"cluster_reliability": 0.0}, "cluster_reliability must be in"),
        ({"cluster_mixup": -0.5}, "cluster_mixup must be >= 0"),
        ({"cluster_mixup": float("nan")}, "cluster_mixup must be >= 0"),
        ({"cluster_split_bn": True, "w_cls": 0.0}, "with w_cls 0 the stage has no source"),
        ({"cluster_reliability": 0.1, "cluster_eps": 0.05}, r"cluster_eps -/\+ it in \(0, 1\)"),
    ],
)
def test_stage_options_are_checked(tmp_path, tiny_config, overrides, message):
    config = tiny_config(tmp_path, method="cluster", **overrides)
    with pytest.raises(ConfigError, match=message):
        config.validate()
