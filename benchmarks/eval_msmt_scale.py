"""evaluate_features at MSMT17 scale (11,659 queries x 82,161 gallery, 2048-d) within 8 GiB.

Identities, cameras and counts are synthetic with MSMT17's shape: 3,060 test identities
seen by 2-6 of 15 cameras each, about 27 gallery and 4 query images per identity.
Features are identity centroid + camera shift + noise, float32. The full float32
distance matrix would take 3.6 GiB on its own; ``evaluate_features`` holds one query
chunk of it at a time.

Prints the time of ``evaluate_features`` and the peak resident memory of the whole process
(``ru_maxrss``, features included) against the 8 GiB target, and the machine's dense
float32 matrix-product rate (NumPy's BLAS, its threads, measured in the same run) with the
rate the evaluation achieves as a fraction of it (the work counted is the distance
products' ``2 Q G d`` FLOPs). ``--quick`` evaluates the first quarter of the queries
against the whole gallery (the memory held is the same; the time is about a quarter).

    .venv/bin/python benchmarks/eval_msmt_scale.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import achieved, gemm_line, gib, identity_features, peak_rss_bytes

from crossreid.evaluation import evaluate_features

NUM_QUERY, NUM_GALLERY, NUM_IDS, NUM_CAMERAS = 11_659, 82_161, 3_060, 15
TARGET_RSS = 8 * 2**30


def _split_counts(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts >= 1 proportional to ``weights`` summing exactly to ``total``."""
    counts = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(np.int64)
    diff = total - counts.sum()
    order = np.argsort(-weights)
    step = 1 if diff > 0 else -1
    i = 0
    while diff != 0:
        j = order[i % order.size]
        if counts[j] + step >= 1:
            counts[j] += step
            diff -= step
        i += 1
    return counts


def msmt_like_labels(rng: np.random.Generator):
    """(q_pids, q_cams, g_pids, g_cams) with MSMT17 test-set sizes."""
    pop = rng.gamma(2.0, 1.0, NUM_IDS) + 0.2  # uneven identity popularity
    g_counts = _split_counts(NUM_GALLERY, pop)
    q_counts = _split_counts(NUM_QUERY, pop)
    cams_per_id = rng.integers(2, 7, NUM_IDS)
    q_pids, q_cams, g_pids, g_cams = [], [], [], []
    for pid in range(NUM_IDS):
        cams = rng.choice(NUM_CAMERAS, cams_per_id[pid], replace=False)
        g_pids.append(np.full(g_counts[pid], pid + 1))
        g_cams.append(rng.choice(cams, g_counts[pid]))
        q_pids.append(np.full(q_counts[pid], pid + 1))
        q_cams.append(rng.choice(cams, q_counts[pid]))
    return (
        np.concatenate(q_pids),
        np.concatenate(q_cams),
        np.concatenate(g_pids),
        np.concatenate(g_cams),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--chunk-size", type=int, default=None, help="query rows per chunk")
    parser.add_argument("--quick", action="store_true", help="the first quarter of the queries")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    q_pids, q_cams, g_pids, g_cams = msmt_like_labels(rng)
    qf, centroids = identity_features(q_pids, q_cams, args.dim, rng, num_cameras=NUM_CAMERAS)
    gf, _ = identity_features(
        g_pids, g_cams, args.dim, rng, centroids, num_cameras=NUM_CAMERAS, distractor_pids=()
    )
    print(
        f"MSMT17 scale: {qf.shape[0]} queries x {gf.shape[0]} gallery, {args.dim}-d float32, "
        f"{np.unique(g_pids).size} identities, {NUM_CAMERAS} cameras; features "
        f"{gib(qf.nbytes + gf.nbytes)}, full distance matrix would be "
        f"{gib(4 * qf.shape[0] * gf.shape[0])}"
    )
    print(f"peak RSS after generating the features: {gib(peak_rss_bytes())}")
    if args.quick:
        keep = qf.shape[0] // 4
        qf, q_pids, q_cams = qf[:keep], q_pids[:keep], q_cams[:keep]
        print(f"--quick: the first {keep} queries")
    gemm, line = gemm_line("numpy")
    print(line)
    flops = 2 * qf.shape[0] * gf.shape[0] * qf.shape[1]

    start = time.perf_counter()
    result = evaluate_features(
        qf, gf, q_pids, g_pids, q_cams, g_cams, metric="cosine", chunk_size=args.chunk_size
    )
    elapsed = time.perf_counter() - start
    peak = peak_rss_bytes()
    print(
        f"evaluate_features (cosine): {elapsed:.1f} s; mAP {result.mAP:.4f}  rank-1 "
        f"{result.rank(1):.4f}  mINP {result.mINP:.4f}  valid queries {result.num_valid_queries}"
    )
    print(
        f"distance products {flops / 1e12:.2f} TFLOP: over the whole evaluation "
        f"{achieved(flops, elapsed, gemm)}"
    )
    print(
        f"peak RSS {gib(peak)} (target <= {gib(TARGET_RSS)}) "
        f"{'PASS' if peak <= TARGET_RSS else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
