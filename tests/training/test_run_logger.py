"""metrics.jsonl and TensorBoard writer of a run."""

from __future__ import annotations

import json

import torch

from crossreid.training.run_logger import METRIC_KEYS, RunLogger, read_metrics

METRICS = {"rank1": 0.5, "rank5": 0.75, "rank10": 0.8, "rank20": 0.9, "mAP": 0.4, "mINP": 0.1}


def test_evaluation_lines_and_events(tmp_path):
    log = RunLogger(tmp_path)
    log.scalars(1, {"total": 2.0, "nan": float("nan")}, prefix="loss/")
    log.images(1, {"input": torch.rand(3, 3, 8, 4)})
    for step in (10, 20):
        log.evaluation(step, {**METRICS, "extra": 1.0})
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 10, **METRICS},
        {"step": 20, **METRICS},
    ]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_drops_lines_after_the_checkpoint_and_fresh_run_starts_empty(tmp_path):
    log = RunLogger(tmp_path)
    for step in (10, 20, 30):
        log.evaluation(step, METRICS)
    log.close()
    RunLogger(tmp_path, resume_step=20).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20]
    RunLogger(tmp_path).close()
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_disabled_logger_writes_nothing(tmp_path):
    log = RunLogger(tmp_path / "rank1", enabled=False)
    assert log.evaluation(5, METRICS)["step"] == 5
    log.close()
    assert not (tmp_path / "rank1").exists()


def test_a_run_resumed_after_its_last_step_logs_that_evaluation_once(tmp_path):
    first = RunLogger(tmp_path)
    first.evaluation(10, dict.fromkeys(METRIC_KEYS, 0.5))
    first.close()
    again = RunLogger(tmp_path, resume_step=10)  # killed after the last save: step 10 again
    again.evaluation(10, dict.fromkeys(METRIC_KEYS, 0.5))
    again.evaluation(20, dict.fromkeys(METRIC_KEYS, 0.6))
    again.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20]
