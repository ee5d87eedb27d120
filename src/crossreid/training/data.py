"""The data of a run: which splits a training mode trains on, adapts to and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader

from crossreid.data.base import ImageRecord
from crossreid.data.loaders import build_source_loader
from crossreid.data.specs import resolve_dataset
from crossreid.errors import DatasetError
from crossreid.training.config import TrainConfig
from crossreid.utils.distributed import DistInfo

__all__ = ["TrainingData", "labelled_source_loader", "load_training_data", "loader_options"]


@dataclass
class TrainingData:
    """The record lists of a run (target labels are never read: the target split is used
    unlabelled, and the evaluation split only by evaluation)."""

    train_records: list[ImageRecord]
    num_classes: int
    eval_query: list[ImageRecord]
    eval_gallery: list[ImageRecord]
    eval_name: str
    eval_train: list[ImageRecord]  # unlabelled use only: camera-wise BatchNorm statistics
    target_records: list[ImageRecord] | None


def load_training_data(config: TrainConfig, progress: bool) -> TrainingData:
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
    return TrainingData(
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


def loader_options(config: TrainConfig, dist: DistInfo) -> dict[str, Any]:
    """Loading and augmentation options shared by every training loader of a run."""
    return {
        "workers": config.workers,
        "seed": config.seed,
        "rank": dist.rank,
        "world_size": dist.world_size,
        "random_erasing": config.random_erasing,
        "pad": config.effective_crop_padding,
    }


def labelled_source_loader(config: TrainConfig, data: TrainingData, dist: DistInfo) -> DataLoader:
    """The run's P x K loader over the labelled source training split (the ARN stage's
    batches, and the source classification kept during the pseudo-label stage)."""
    return build_source_loader(
        data.train_records, config.image_size, config.batch_size, config.num_instances,
        **loader_options(config, dist),
    )  # fmt: skip
