"""The demo's recipe: the synthetic domains' size and the training settings of its runs.

The settings are measured choices (see docs/demo-measurements.md); every run is trained from
scratch on a 2-core CPU and evaluated at its last step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossreid.evaluation.rank import RANK_METRICS
from crossreid.training.config import TrainConfig
from crossreid.training.terms import LOSS_TERMS

__all__ = [
    "ABLATION_TERMS",
    "DEFAULT_RECIPE",
    "METRICS",
    "MODEL_LABELS",
    "QUICK_RECIPE",
    "STAGE_SEED_STRIDE",
    "STARTS_FROM",
    "DemoRecipe",
    "recipe_replace",
    "train_config",
]

#: The three trained models: key in the results, training mode, label in tables.
MODEL_LABELS: dict[str, tuple[str, str]] = {
    "source_only": ("source-only", "source-only (A)"),
    "adapted": ("adapt", "adapted (A→B)"),
    "oracle": ("oracle", "oracle (B labels)"),
    "pseudo_labels": ("adapt", "ARN + pseudo-labels"),
}
#: Models trained from another model's run: key → the key of the run they start from.
STARTS_FROM = {"pseudo_labels": "adapted"}
#: The pseudo-label stage's run ``i`` (from 1) is seeded ``seed + STAGE_SEED_STRIDE * (i - 1)``,
#: so its first run is the single run of ``pseudo_runs = 1``.
STAGE_SEED_STRIDE = 12345
#: The target metrics in the demo's tables and results (fractions).
METRICS = tuple(name for name in RANK_METRICS if name != "rank20")
#: What ``--ablate`` switches off in turn: each loss weight, the target colour transfer and
#: the camera-wise BatchNorm statistics at test time (terms already off are skipped).
ABLATION_TERMS = (
    *(term.weight_field for term in LOSS_TERMS if "arn" in term.methods),
    "target_style_prob",
    "camera_bn",
)


@dataclass(frozen=True)
class DemoRecipe:
    """Data and training settings of the demo (sized for a 2-core CPU).

    The synthetic domains are generated at ``data_size`` with ``ids`` identities each
    (``train_ids`` of them for training, default half; the rest for query/gallery), ``images``
    images per identity and ``cameras`` cameras. ``train`` holds
    :class:`~crossreid.training.TrainConfig` fields shared by the runs, ``adapt`` those of
    the adapted run only, ``pseudo`` those of the pseudo-label stage (on top of both; it
    starts from the adapted run).
    """

    ids: int = 200
    #: Training identities; the other ``ids - train_ids`` are B's (and A's) query/gallery.
    train_ids: int | None = 50
    images: int = 12
    cameras: int = 4
    data_size: tuple[int, int] = (64, 32)
    train: dict[str, Any] = field(default_factory=dict)
    #: Settings of the adapted run only (on top of ``train``): what uses unlabelled target
    #: data outside the training batches, such as camera-wise BatchNorm at test time.
    adapt: dict[str, Any] = field(default_factory=dict)
    #: Settings of the pseudo-label stage (``method: cluster``), started from the adapted run.
    pseudo: dict[str, Any] = field(default_factory=dict)
    #: The pseudo-label model is the average of the weights of this many stage runs from the
    #: adapted model, run ``i`` (from 1) seeded ``seed + STAGE_SEED_STRIDE * (i - 1)``
    #: (:mod:`crossreid.models.soup`); 1: a single run. Two runs averaged beat the mean of
    #: the two on each of seeds 0-7 (+1.1 points of target mAP on average, +0.2 to +1.9;
    #: docs/demo-measurements.md). On two cores the second run goes beside the first once the
    #: oracle has finished, so it costs the demo about a minute, not a whole stage.
    pseudo_runs: int = 2

    def spec(self, domain: str, seed: int) -> str:
        """The ``synthetic:`` dataset spec of ``domain`` for a demo seed."""
        h, w = self.data_size
        train = f"&train_ids={self.train_ids}" if self.train_ids is not None else ""
        return (
            f"synthetic:{domain}?ids={self.ids}&images={self.images}&cameras={self.cameras}"
            f"&seed={seed}&size={h}x{w}{train}"
        )


#: Training settings common to both recipes: resnet18 from scratch at the data's size.
_COMMON_TRAIN: dict[str, Any] = {
    "backbone": "resnet18",
    "pretrained": "none",
    "image_size": (64, 32),
    "decoder_widths": (128, 64, 32, 16),
    "batch_size": 32,
    "num_instances": 4,
    # From scratch, SGD at a useful learning rate diverges in the first steps at this
    # size; Adam at 1e-3 learns steadily (measured: see docs/demo-measurements.md).
    "optimizer": "adam",
    "lr": 0.001,
    # Adaptation recipe (measured, see docs/demo-measurements.md): MMD at weight 1 aligns
    # the identity vectors and the contrastive term is off (removing it helped the adapted
    # model most in the ablation). The target colour transfer (target_style_prob) is off: on
    # the 150-identity test set it cost the adapted model 8.9 points of target mAP on seed 0
    # (5.1 % with it, 14.0 % without; with camera-wise BatchNorm at test time). The same
    # weights are used by all three runs; MMD only acts where target batches exist.
    "target_style_prob": 0.0,
    "w_mmd": 1.0,
    "w_ctr": 0.0,
    "warmup_steps": 20,
    "schedule": "cosine",
    "dist_metric": "cosine",
    "workers": 0,
    "device": "cpu",
    # The demo's evaluations and clusterings each extract a few thousand 64x32 images, with
    # camera-wise BatchNorm one graph per camera: an ONNX export per call (1.6 s for resnet18
    # at 128x64 in benchmarks/extract_speed.py) would cost more than onnxruntime saves.
    "engine": "torch",
    "log_every": 10,
    "image_every": 100,
}

#: The adapted model is evaluated with camera-wise BatchNorm statistics taken from B's
#: unlabelled training images (test-time adaptation to each target camera's colour cast and
#: exposure; measured in docs/demo-measurements.md). The source-only model must not see
#: target data and the oracle is the plain supervised model, so neither uses it.
_ADAPT_ONLY: dict[str, Any] = {"camera_bn": True}

#: The pseudo-label stage (measured, see docs/demo-measurements.md): cluster B's training
#: images with the adapted model every ``cluster_every`` steps and train the identity encoder
#: on the clusters. ``cluster_k1`` follows the data's scale, about the images per identity
#: (12 here, from the generator's settings, not from labels): with the real-data value 30,
#: neighbourhoods reach across identities and DBSCAN merges most of B into a few clusters.
_PSEUDO: dict[str, Any] = {
    "method": "cluster",
    "max_steps": 300,
    "cluster_every": 50,
    "cluster_k1": 15,
    "cluster_k2": 6,
    # MMT's eps rule (the mean of the smallest 0.16% of the distances) assumes hundreds of
    # identities: on 600 images of 50 it gave eps 0.11 and left 566 images outliers (seed 0).
    # 0.4 keeps 65-85% of the images in 38-41 clusters there (docs/demo-measurements.md).
    "cluster_eps": 0.4,
    "cluster_camera_bn": True,
    # The source classification stays on (w_cls 1, TrainConfig's default): a labelled A
    # batch beside each pseudo-labelled B batch (docs/demo-measurements.md).
    # Random erasing (p 0.5, as in Cluster Contrast) on the stage's batches keeps the model
    # from memorising its clusters' mistakes: from seeds 0 and 3's adapted models it took
    # the stage from 19.3 / 8.4 % to 23.0 / 10.6 % target mAP and the clusters' NMI rose
    # during the stage (seed 0: 0.78 to 0.86) where without it it stayed flat; with it, the
    # memory temperature 0.05 (TrainConfig's default) gave 23.6 / 11.6 % against 0.1's.
    "random_erasing": 0.5,
    # SpCL's reliability criterion at SpCL's radius change (0.02, not tuned): train only on
    # the clusters that stay apart at eps + 0.02 and, in each, the images that stay together
    # at eps - 0.02. From the same adapted models, seeds 0-3: 23.5 / 18.6 / 14.0 / 13.0 %
    # target mAP against 23.6 / 19.0 / 12.8 / 11.6 % without it (0.04: 13.9 / 11.5 % on
    # seeds 2 / 3).
    "cluster_reliability": 0.02,
    # The stage's B and A images go through the identity encoder apart, so BatchNorm
    # normalises each domain by its own batch statistics, as camera-wise BatchNorm does
    # per B camera at clustering and test time. From the same adapted models, seeds 0-3:
    # 25.0 / 21.5 / 17.2 / 14.3 % target mAP against 23.5 / 18.6 / 14.0 / 13.0 % with one
    # mixed batch (per B camera instead: 15.2 / 6.8 % on seeds 2 / 3).
    "cluster_split_bn": True,
    "lr": 1e-3,
    "backbone_lr": 1e-3,
    # The warm-up spans the stage's first clustering round (50 steps, not 10): the model
    # does not lurch at the first, least reliable clusters. Averaged over its two runs,
    # seeds 0-7: 19.01 % target mAP against 18.21 % with 10 steps; held out, seeds 8-13:
    # 21.86 % against 20.33 %, but seeds 14-19: 20.1 % against 20.8 %. Over seeds 0-19,
    # +0.6 points (standard error 0.35; docs/demo-measurements.md).
    "warmup_steps": 50,
    # After the warm-up the learning rate restarts at each clustering and falls by a half
    # cosine over the round (SGDR), so each run ends a cycle at its last clustering and the
    # two runs end further apart; their average gains more over them (+1.4 and +1.9 points on
    # seeds 0-7 and 8-13, against +1.1 and +1.4 with one cosine over the stage). Two-run
    # average, seeds 0-7 (where it was chosen): 19.66 % target mAP against 19.01 %; held
    # out, seeds 8-13: 22.75 % against 21.86 % (higher on 5 of 6), then seeds 14-19: +0.43
    # points (higher on 5 of 6; docs/demo-measurements.md).
    "restart_every": 50,
    # Mixup of B's batch (Beta(0.5, 0.5)): a blend of two pseudo-identities cannot be fitted by
    # memorising either image's label, so, like random erasing, it keeps the stage from
    # learning its clusters' mistakes. Two-run average, seeds 4-11 (where it was chosen):
    # 21.08 % target mAP against 19.99 % (higher on 6 of 8); held out, seeds 12-17: 25.36 %
    # against 22.31 % (higher on all six; docs/demo-measurements.md).
    "cluster_mixup": 0.5,
}

DEFAULT_RECIPE = DemoRecipe(
    train={**_COMMON_TRAIN, "max_steps": 250}, adapt=dict(_ADAPT_ONLY), pseudo=dict(_PSEUDO)
)
QUICK_RECIPE = DemoRecipe(
    ids=60,
    train_ids=None,
    images=10,
    train={**_COMMON_TRAIN, "max_steps": 80},
    adapt=dict(_ADAPT_ONLY),
    # The stage's warm-up spans its first clustering round here too, the learning rate
    # restarts at each clustering, and mixup blends B's batches.
    pseudo={
        **_PSEUDO,
        "max_steps": 60,
        "cluster_every": 20,
        "cluster_k1": 12,
        "warmup_steps": 20,
        "restart_every": 20,
    },
)


def train_config(
    recipe: DemoRecipe,
    mode: str,
    seed: int,
    output: Path,
    init_from: Path | None = None,
    /,
    **overrides: Any,
) -> TrainConfig:
    """The :class:`TrainConfig` of one demo run (``mode``: adapt, source-only or oracle; with
    ``init_from``, the pseudo-label stage started from that run). ``seed`` seeds the domains
    and, unless ``overrides`` hold a ``seed``, the training."""
    values = {**recipe.train, **(recipe.adapt if mode == "adapt" else {})}
    if init_from is not None:
        values.update(recipe.pseudo, init_from=str(init_from))
    values.update(overrides)
    max_steps = int(values["max_steps"])
    # An override "seed" seeds the training only; the domains keep the demo seed.
    run_seed = int(values.pop("seed", seed))
    return TrainConfig(
        source=recipe.spec("A", seed),
        target=recipe.spec("B", seed),
        mode=mode,
        seed=run_seed,
        output=str(output),
        # One evaluation, at the end: the reported model is the last one, not the best.
        eval_every=max_steps,
        save_every=max_steps,
        **values,
    )


def recipe_replace(recipe: DemoRecipe, **train_overrides: Any) -> DemoRecipe:
    """A copy of ``recipe`` with some training settings changed."""
    return dataclasses.replace(recipe, train={**recipe.train, **train_overrides})
