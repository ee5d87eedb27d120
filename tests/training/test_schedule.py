"""Learning-rate schedules: warm-up, cosine, step, constant."""

from __future__ import annotations

import math

import pytest
import torch

from crossreid.training.schedule import LRSchedule, build_scheduler


def test_warmup_is_linear_from_start_factor():
    f = LRSchedule(max_steps=100, warmup_steps=10, kind="constant", warmup_start=0.1)
    assert [round(f(s), 6) for s in (0, 5, 10, 50)] == [0.1, 0.55, 1.0, 1.0]


def test_cosine_endpoints_and_middle():
    f = LRSchedule(max_steps=110, warmup_steps=10, kind="cosine")
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert f(85) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))


def test_cosine_restarts_every_n_steps_after_warmup():
    f = LRSchedule(max_steps=200, warmup_steps=50, kind="cosine", restart_every=50)
    assert f(49) == pytest.approx(0.01 + 0.99 * 49 / 50)
    # Each 50-step cycle after the warm-up: 1 at its start, 0.5 halfway, back to 1 after it.
    assert [f(s) for s in (50, 75, 100, 125, 150)] == pytest.approx([1, 0.5, 1, 0.5, 1])
    assert f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 49 / 50)))
    g = LRSchedule(max_steps=100, warmup_steps=10, restart_every=30, final_factor=0.2)
    assert g(39) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))
    assert g(40) == 1.0
    # restart_every at least the run's length is the plain cosine up to the cycle's end.
    plain, once = LRSchedule(max_steps=60, warmup_steps=10), LRSchedule(60, 10, restart_every=50)
    assert [once(s) for s in range(60)] == pytest.approx([plain(s) for s in range(60)])


@pytest.mark.parametrize(("kind", "every"), [("step", 10), ("constant", 10), ("cosine", -1)])
def test_restarts_need_the_cosine_and_a_count(kind, every):
    with pytest.raises(ValueError, match=f"restart_every {every}"):
        LRSchedule(max_steps=100, kind=kind, restart_every=every)


def test_step_schedule_default_and_explicit_milestones():
    f = LRSchedule(max_steps=100, kind="step", gamma=0.1)
    assert f.milestones == [50, 75]
    assert [f(s) for s in (49, 50, 74, 75)] == pytest.approx([1, 0.1, 0.1, 0.01])
    g = LRSchedule(max_steps=100, kind="step", milestones=[3], gamma=0.5)
    assert (g(2), g(3)) == (1.0, 0.5)


def test_scheduler_drives_every_group_and_state_is_plain():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [], "lr": 1.0}], lr=1.0)
    sched = build_scheduler(
        opt, LRSchedule(max_steps=10, warmup_steps=2, kind="constant", warmup_start=0.5)
    )
    lrs = []
    for _ in range(3):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs == [pytest.approx(row) for row in ([0.05, 0.5], [0.075, 0.75], [0.1, 1.0])]
    state = sched.state_dict()
    assert state["last_epoch"] == 3 and isinstance(state["lr_lambdas"][0], dict)
