"""torchrun environment parsing."""

from __future__ import annotations

import pytest

from crossreid.errors import ConfigError
from crossreid.utils.distributed import DistInfo, all_reduce_mean, distributed_env


def test_single_process_defaults(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = distributed_env()
    assert (info.rank, info.world_size, info.is_distributed, info.is_main) == (0, 1, False, True)


def test_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed_env()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 4, 1, False)


@pytest.mark.parametrize(("rank", "world"), [("2", "2"), ("x", "2")])
def test_inconsistent_environment(monkeypatch, rank, world):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ConfigError, match="RANK"):
        distributed_env()


def test_all_reduce_is_identity_in_one_process():
    import torch

    x = torch.tensor([1.0, 2.0])
    assert all_reduce_mean(x, DistInfo()) is x
