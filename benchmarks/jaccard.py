"""Jaccard distance + DBSCAN at MSMT17 training scale: crossreid vs the published algorithm.

Usage:
    .venv/bin/python benchmarks/jaccard.py [--n 32621] [--dim 2048] [--reference-n N] [--quick]

Features are synthetic, clustered like a re-ID training set: about 31 images per
identity (1,041 identities at N = 32,621, as MSMT17's training split), each an identity
centroid plus a camera shift (15 cameras) plus noise, L2-normalised, float32.

Every measurement runs in its own child process, which builds the features and reports
its wall times and its peak resident memory (``ru_maxrss``: the whole process, features
and library imports included). The figures printed:

* crossreid at ``--n``: ``jaccard_distance(k1=30, k2=6)``, ``estimate_eps`` (MMT's rule)
  and ``cluster_pseudo_labels`` (DBSCAN, ``--eps``), time and peak memory, with the time
  of its exact k-nearest-neighbour search (blocked products over half of the symmetric
  similarity matrix, NumPy's BLAS);
* the published algorithm (``tests/evaluation/jaccard_oracle.py`` as published: faiss'
  own k1 search, dense N x N arrays, Python loops, then scikit-learn's DBSCAN on the
  dense matrix) and crossreid at the largest N whose estimated peak fits in
  ``--reference-gib`` (8 GiB by default), or at ``--reference-n``: both times, both
  peaks, the speed ratio, the largest difference over 1,024 sampled rows, and whether
  DBSCAN gives the same labels.

crossreid's inner loops are compiled by numba on first use and cached on disk: the script
first times a tiny call in two fresh processes (the first compiles if this install has not
yet; the second loads the cache), and each timed crossreid run, also a fresh process,
includes importing numba and loading its loops.

The machine's cores are shared with whatever else runs; the load average is printed, and
so is the machine's dense float32 matrix-product rate (NumPy's BLAS, its threads, measured
in the same run) with the rate each exact k-nearest-neighbour search achieves as a
fraction of it. The work counted is the similarity products the search makes: all
``N^2`` for faiss' flat search (``2 N^2 d`` FLOPs), half of them for crossreid's
(``N^2 d``; its diagonal blocks, multiplied whole, add about ``2048 / N`` more, not
counted).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import achieved, gemm_line, identity_features, peak_rss_bytes

MSMT_TRAIN_IMAGES, MSMT_TRAIN_IDS, MSMT_CAMERAS = 32621, 1041, 15
ORACLE_PATH = Path(__file__).resolve().parent.parent / "tests" / "evaluation" / "jaccard_oracle.py"
GIB = 1024**3
SAMPLED_ROWS = 1024
# The published code's peak, measured at N = 8,000 and 16,000: about 12 bytes per pair
# (float32 N x N arrays: V, its query expansion, the Jaccard matrix; NumPy temporaries)
# plus about 0.3 GiB of imports and buffers besides the features.
REFERENCE_BYTES_PER_PAIR = 12
REFERENCE_OVERHEAD = 0.3 * GIB


def msmt_like_features(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``[n, dim]`` float32 unit vectors, about 31 per identity, 15 cameras."""
    rng = np.random.default_rng(seed)
    num_ids = max(2, round(n * MSMT_TRAIN_IDS / MSMT_TRAIN_IMAGES))
    pids = rng.integers(0, num_ids, n)
    camids = rng.integers(0, MSMT_CAMERAS, n)
    features, _ = identity_features(
        pids, camids, dim, rng, num_cameras=MSMT_CAMERAS, distractor_pids=()
    )
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features


def sampled_rows(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, SAMPLED_ROWS)).astype(np.int64))


def _load_oracle():
    spec = importlib.util.spec_from_file_location("jaccard_oracle", ORACLE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(module, name: str, figures: dict) -> None:
    """Wrap ``module.name`` so the seconds spent in it land in ``figures["knn_s"]``."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        figures["knn_s"] = figures.get("knn_s", 0.0) + time.perf_counter() - start
        return result

    setattr(module, name, wrapper)


def compile_loops() -> None:
    """Time crossreid's first call in a fresh process (numba compiles its loops, or loads
    them from its disk cache) on 64 points, and print it as one JSON line."""
    start = time.perf_counter()
    from crossreid.evaluation import jaccard_distance

    jaccard_distance(msmt_like_features(64, 16), k1=8, k2=3)
    print(json.dumps({"first_call_s": time.perf_counter() - start}))


def child(method: str, n: int, dim: int, eps: float, out_file: str) -> None:
    """Build the features, time one run, save sampled rows and labels, print one JSON line."""
    features = msmt_like_features(n, dim)
    features_peak = peak_rss_bytes()
    figures: dict[str, float] = {}
    rows = sampled_rows(n)
    # Both sides cluster with scikit-learn (crossreid imports it on first use); import it
    # up front so the timings compare the algorithms, not a one-off import.
    import sklearn.cluster  # noqa: F401

    if method == "crossreid":
        import crossreid.evaluation.jaccard as jaccard_module
        from crossreid.evaluation import cluster_pseudo_labels, estimate_eps, jaccard_distance

        _timed(jaccard_module, "_nearest_neighbours", figures)
        start = time.perf_counter()
        dist = jaccard_distance(features, k1=30, k2=6)
        figures["jaccard_s"] = time.perf_counter() - start
        start = time.perf_counter()
        figures["mmt_eps"] = estimate_eps(dist)
        figures["eps_s"] = time.perf_counter() - start
        start = time.perf_counter()
        pseudo = cluster_pseudo_labels(dist, eps=eps, min_samples=4)
        figures["dbscan_s"] = time.perf_counter() - start
        labels = pseudo.labels
        figures["stored_per_row"] = dist.nnz / n
        head = np.ones((rows.size, n), dtype=np.float32)
        part = dist[rows].tocoo()
        head[part.row, part.col] = part.data
    else:
        from sklearn.cluster import DBSCAN

        oracle = _load_oracle()
        _timed(oracle, "_initial_rank", figures)
        start = time.perf_counter()
        dense = oracle.jaccard_distance_oracle(features, k1=30, k2=6, exact_ties=False)
        figures["jaccard_s"] = time.perf_counter() - start
        start = time.perf_counter()
        labels = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense)
        figures["dbscan_s"] = time.perf_counter() - start
        head = dense[rows]
    figures["num_clusters"] = int(labels.max()) + 1
    figures["num_outliers"] = int(np.count_nonzero(labels < 0))
    figures["features_peak"] = features_peak
    figures["peak"] = peak_rss_bytes()
    np.savez(out_file, head=head, labels=labels)
    print(json.dumps(figures))


def measure(
    method: str, n: int, dim: int, eps: float, tag: str
) -> tuple[dict, np.lib.npyio.NpzFile]:
    out_file = f"/tmp/jaccard_bench_{os.getpid()}_{tag}.npz"
    figures = _run_child(
        ["--child", method, "--n", str(n), "--dim", str(dim), "--eps", str(eps), "--out", out_file]
    )
    arrays = dict(np.load(out_file))
    os.remove(out_file)
    return figures, arrays


def _run_child(arguments: list[str]) -> dict:
    """Run this script with ``arguments`` in a fresh process; its last stdout line as JSON."""
    done = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def largest_reference_n(budget: float, dim: int) -> int:
    """Largest N whose estimated published-algorithm peak fits in ``budget`` bytes."""
    # REFERENCE_BYTES_PER_PAIR * N^2 + 4 * dim * N + overhead <= budget
    a, b, c = REFERENCE_BYTES_PER_PAIR, 4 * dim, REFERENCE_OVERHEAD - budget
    return int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))


def describe(method: str, n: int, f: dict, dim: int, gemm: float) -> str:
    total = f["jaccard_s"] + f.get("eps_s", 0.0) + f["dbscan_s"]
    eps_part = f", MMT eps {f['eps_s']:.2f} s" if "eps_s" in f else ""
    if method == "published":
        search, products = "faiss kNN", 2 * n * n * dim
    else:
        search, products = "kNN over half of X Xt", n * n * dim
    knn = achieved(products, f["knn_s"], gemm)
    return (
        f"{method:<9} N={n:>6}: {total:6.1f} s (jaccard {f['jaccard_s']:.1f} s, of which "
        f"{search} {f['knn_s']:.1f} s ({knn}){eps_part}, DBSCAN {f['dbscan_s']:.1f} s), "
        f"peak RSS {f['peak'] / GIB:.2f} GiB ({f['features_peak'] / GIB:.2f} GiB once the "
        f"features are built); {f['num_clusters']} clusters, {f['num_outliers']} outliers"
    )


def total_seconds(f: dict) -> float:
    return f["jaccard_s"] + f.get("eps_s", 0.0) + f["dbscan_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=MSMT_TRAIN_IMAGES, help="samples (32621)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (2048)")
    parser.add_argument("--eps", type=float, default=0.6, help="DBSCAN eps (0.6, as SpCL)")
    parser.add_argument("--reference-n", type=int, help="N for the published algorithm")
    parser.add_argument("--reference-gib", type=float, default=8.0, help="its memory budget")
    parser.add_argument("--quick", action="store_true", help="N=4000, reference at N=2000")
    parser.add_argument(
        "--child", choices=["crossreid", "published", "compile"], help=argparse.SUPPRESS
    )
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "compile":
        compile_loops()
        return
    if args.child:
        child(args.child, args.n, args.dim, args.eps, args.out)
        return
    if args.quick:
        args.n, args.reference_n = 4000, 2000
    reference_n = args.reference_n or largest_reference_n(args.reference_gib * GIB, args.dim)
    reference_n = min(reference_n, args.n)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Jaccard distance (k1=30, k2=6) + DBSCAN (eps={args.eps}, min_samples=4), "
        f"features {args.dim}-d float32, {os.cpu_count()} CPU cores (load average {load})"
    )
    gemm, line = gemm_line("numpy")
    print(line)
    # numba compiles crossreid's loops once per install and caches them on disk; each timed
    # run below is a fresh process that imports numba and loads them (included in its time).
    first = [_run_child(["--child", "compile"])["first_call_s"] for _ in range(2)]
    print(
        f"crossreid's compiled loops: first call in a fresh process {first[0]:.2f} s "
        f"(compiling, if this install has not yet), then {first[1]:.2f} s (loading the cache)"
    )
    full, _ = measure("crossreid", args.n, args.dim, args.eps, "full")
    print(describe("crossreid", args.n, full, args.dim, gemm))
    print(
        f"          {full['stored_per_row']:.0f} distances stored per row; "
        f"MMT eps (rho=1.6e-3) would be {full['mmt_eps']:.3f}"
    )

    ours, ours_arrays = measure("crossreid", reference_n, args.dim, args.eps, "ours")
    published, published_arrays = measure("published", reference_n, args.dim, args.eps, "pub")
    print(describe("crossreid", reference_n, ours, args.dim, gemm))
    print(describe("published", reference_n, published, args.dim, gemm))
    diff = float(np.abs(ours_arrays["head"] - published_arrays["head"]).max())
    differing = int(np.count_nonzero(ours_arrays["labels"] != published_arrays["labels"]))
    rows = sampled_rows(reference_n).size
    ours_rest = ours["jaccard_s"] - ours["knn_s"]
    published_rest = published["jaccard_s"] - published["knn_s"]
    print(
        f"at N={reference_n}: crossreid {published['jaccard_s'] / ours['jaccard_s']:.1f}x "
        f"faster on the distance, {total_seconds(published) / total_seconds(ours):.1f}x "
        f"with DBSCAN, {published_rest / ours_rest:.1f}x on the distance without the kNN "
        f"search both make ({published_rest:.1f} s vs {ours_rest:.1f} s); peak RSS "
        f"{published['peak'] / GIB:.2f} vs {ours['peak'] / GIB:.2f} GiB; max |diff| "
        f"{diff:.1e} over {rows} sampled rows; DBSCAN labels "
        + ("identical" if differing == 0 else f"differ for {differing} samples")
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end: {load}")


if __name__ == "__main__":
    main()
