"""Evaluation speed and memory at Market-1501 scale (3,368 queries x 15,913 gallery).

Prints, from one run on the same machine and thread settings:

* the bare ``q @ g.T`` product (NumPy, like ``pairwise_distance`` on NumPy input);
* ``pairwise_distance(cosine) + evaluate_rank`` (target: at most 1.3x the product);
* the naive reference algorithm (stable argsort of every row, then the per-query loop,
  ``tests/evaluation/oracle.py``) on the same distance matrix, against ``evaluate_rank``
  (target: at least 5x faster); the end-to-end ratio (distance included on both sides) is
  printed too, for information: the matrix product both share bounds it;
* the peak extra memory of ``evaluate_rank`` (tracemalloc, NumPy allocations included)
  against the size of the float32 distance matrix (target: at most 1x);
* mAP / rank-1 of both, which must agree;
* the machine's dense float32 matrix-product rate with NumPy's BLAS and its threads, measured
  in the same run, and the rate the product and the whole evaluation achieve as a fraction
  of it (the work counted is the product's ``2 Q G d`` FLOPs).

Labels come from ``../shared/data/market1501_filelist.txt.gz``; features are synthetic
2048-d float32 (identity centroid + camera shift + noise) so matches sit at realistic ranks.

    .venv/bin/python benchmarks/eval_market_scale.py [--repeats 3] [--skip-naive] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np
from _common import (
    REPO,
    achieved,
    best_time,
    gemm_line,
    identity_features,
    market_labels,
    mib,
    traced_peak,
)

from crossreid.evaluation import evaluate_rank, pairwise_distance


def _load_oracle():
    spec = importlib.util.spec_from_file_location(
        "crossreid_eval_oracle", REPO / "tests" / "evaluation" / "oracle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--skip-naive", action="store_true", help="skip the slow baseline")
    parser.add_argument("--naive-repeats", type=int, default=2, help="naive timing repeats")
    parser.add_argument("--quick", action="store_true", help="one repeat, no naive baseline")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.skip_naive = 1, True

    labels = market_labels()
    q_pids, q_cams = labels["query"]
    g_pids, g_cams = labels["gallery"]
    rng = np.random.default_rng(0)
    qf, centroids = identity_features(q_pids, q_cams, args.dim, rng, num_cameras=6)
    gf, _ = identity_features(g_pids, g_cams, args.dim, rng, centroids, num_cameras=6)
    print(
        f"Market-1501 scale: {qf.shape[0]} queries x {gf.shape[0]} gallery, {args.dim}-d "
        f"float32; OMP/OpenBLAS threads: {os.environ.get('OMP_NUM_THREADS', 'default')}, "
        f"cpus: {os.cpu_count()}"
    )
    gemm, line = gemm_line("numpy")
    print(line)
    flops = 2 * qf.shape[0] * gf.shape[0] * qf.shape[1]  # the q @ g.T product

    def fast():
        dist = pairwise_distance(qf, gf, "cosine")
        return evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)

    # Interleave the two so that load from other processes hits both alike.
    t_matmul, t_fast, pair_ratios = float("inf"), float("inf"), []
    for _ in range(args.repeats):
        t_mm, product = best_time(lambda: qf @ gf.T, 1)
        del product
        t, result = best_time(fast, 1)
        t_matmul, t_fast = min(t_matmul, t_mm), min(t_fast, t)
        pair_ratios.append(t / t_mm)

    dist = pairwise_distance(qf, gf, "cosine")
    t_dist, _ = best_time(lambda: pairwise_distance(qf, gf, "cosine"), args.repeats)
    t_rank, _ = best_time(
        lambda: evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50), args.repeats
    )
    peak, _ = traced_peak(lambda: evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50))

    print(
        f"bare q @ g.T (numpy)                 : {t_matmul:8.3f} s   "
        f"({achieved(flops, t_matmul, gemm)})"
    )
    print(
        f"pairwise_distance + evaluate_rank    : {t_fast:8.3f} s   "
        f"(distance {t_dist:.3f} s, evaluate_rank {t_rank:.3f} s; product FLOPs over the "
        f"whole: {achieved(flops, t_fast, gemm)})"
    )
    ratio = t_fast / t_matmul
    print(
        f"per-pair ratios (product, then distance + evaluation, interleaved): "
        f"{' '.join(f'{r:.3f}' for r in pair_ratios)}; median {np.median(pair_ratios):.3f}"
    )
    print(
        f"ratio to bare product (best / best)  : {ratio:8.3f}x   (target <= 1.3x) "
        f"{'PASS' if ratio <= 1.3 else 'FAIL'}"
    )
    print(
        f"peak extra memory of evaluate_rank   : {mib(peak)} vs float32 distmat "
        f"{mib(dist.nbytes)} ({peak / dist.nbytes:.3f}x, target <= 1x) "
        f"{'PASS' if peak <= dist.nbytes else 'FAIL'}"
    )
    print(
        f"fast: mAP {result.mAP:.6f}  rank-1 {result.rank(1):.6f}  mINP {result.mINP:.6f}  "
        f"valid queries {result.num_valid_queries}"
    )

    if args.skip_naive:
        return
    oracle = _load_oracle()
    t_naive = float("inf")
    for _ in range(args.naive_repeats):
        start = time.perf_counter()
        cmc, m_ap, m_inp, num_valid, _ = oracle.naive_market(
            dist, q_pids, g_pids, q_cams, g_cams, max_rank=50
        )
        t_naive = min(t_naive, time.perf_counter() - start)
    print(
        f"naive: mAP {m_ap:.6f}  rank-1 {cmc[0]:.6f}  mINP {m_inp:.6f}  valid queries {num_valid}"
    )
    print(
        f"max |CMC difference| {np.abs(cmc - result.cmc).max():.2e}, "
        f"|mAP difference| {abs(m_ap - result.mAP):.2e}, "
        f"|mINP difference| {abs(m_inp - result.mINP):.2e}"
    )
    print(f"naive algorithm (argsort + loop)     : {t_naive:8.3f} s   (same distance matrix)")
    speedup = t_naive / t_rank
    print(
        f"speed-up of evaluate_rank over naive : {speedup:8.1f}x   (target >= 5x) "
        f"{'PASS' if speedup >= 5 else 'FAIL'}"
    )
    end_to_end = (t_dist + t_naive) / t_fast
    print(
        f"end to end, distance + naive vs distance + evaluate_rank: {end_to_end:.2f}x "
        "(bounded by the shared matrix product)"
    )


if __name__ == "__main__":
    main()
