"""Gallery search with faiss: exact vs approximate (IVF) queries/second and recall@10.

Usage:
    .venv/bin/python benchmarks/search.py [--n 500000] [--dim 2048] [--queries 1000]

Data: ``n`` L2-normalised 2048-d float32 vectors drawn from a mixture of ``n / 100``
isotropic Gaussians (centres ~ N(0, I), points = centre + ``--sigma`` * N(0, I), so about
100 vectors per "identity", like re-ID features cluster by person); the queries are fresh
draws from the same mixture. Uniform random vectors would be the worst case for an IVF index
(no structure for its cells to follow) and are not what a re-ID gallery looks like.

Both indexes come from :func:`crossreid.retrieval.build_index` with the cosine metric:
exact (``IndexFlatIP``) and IVF (``IndexIVFFlat``, nlist = 4 sqrt(n), 10 k-means
iterations on ``--train-per-cell`` sampled vectors per cell). Recall@10 is the fraction of the exact top-10 that the IVF search
returns, averaged over queries. nprobe is swept; the smallest one reaching recall 0.95 is
reported with its speed-up over exact search.

1,000,000 vectors need 8 GB for the vectors and as much again for the IVF copy; the
default 500,000 (4 GB + 4 GB) is what fits beside other work on a 24 GB machine;
``--quick`` uses 50,000 vectors and 200 queries.

The machine's dense float32 matrix-product rate (NumPy's BLAS, its threads, measured in
the same run) is printed with the rate each search achieves as a fraction of it: exact
search does ``2 n d`` FLOPs per query; IVF ``2 d (nlist + nprobe n / nlist)`` (the
coarse quantiser, then the visited cells, assuming cells of equal size).
"""

from __future__ import annotations

import argparse
import gc
import math
import time

import faiss
import numpy as np
from _common import achieved, gemm_line

from crossreid.retrieval import build_index


def mixture(n: int, centres: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` normalised draws from the Gaussian mixture, generated in float32 chunks."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        chunk = centres[rng.integers(0, len(centres), size=stop - start)]
        chunk += sigma * rng.standard_normal(chunk.shape, dtype=np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        out[start:stop] = chunk
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-cell", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="n=50,000, 200 queries")
    args = parser.parse_args()
    if args.quick:
        args.n, args.queries = 50_000, 200
    rng = np.random.default_rng(args.seed)
    clusters = max(1, args.n // 100)
    centres = rng.standard_normal((clusters, args.dim), dtype=np.float32)
    print(
        f"data: {args.n:,} x {args.dim} float32, L2-normalised, mixture of {clusters:,} "
        f"Gaussians (sigma {args.sigma}); {args.queries} queries from the same mixture; "
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads"
    )
    gemm, line = gemm_line("numpy")
    print(line)
    queries = mixture(args.queries, centres, args.sigma, rng)
    gallery = mixture(args.n, centres, args.sigma, rng)

    start = time.perf_counter()
    exact = build_index(gallery, "cosine")
    build_exact = time.perf_counter() - start
    # The exact index holds a copy; search-time IVF building reads it back from there.
    del gallery
    gc.collect()
    stored = faiss.rev_swig_ptr(exact.index.get_xb(), exact.ntotal * exact.dim)
    gallery = np.asarray(stored).reshape(exact.ntotal, exact.dim)

    exact.search(queries[:10], args.k)  # warm-up
    start = time.perf_counter()
    _, truth = exact.search(queries, args.k)
    exact_time = time.perf_counter() - start
    exact_qps = args.queries / exact_time
    exact_flops = 2 * args.n * args.dim * args.queries
    print(
        f"exact (IndexFlatIP): build {build_exact:.1f} s, {exact_qps:,.1f} queries/s, "
        f"{achieved(exact_flops, exact_time, gemm)}"
    )

    nlist = int(round(4 * math.sqrt(args.n)))
    train = min(args.n, args.train_per_cell * nlist)
    start = time.perf_counter()
    ivf = build_index(
        gallery, "cosine", approx=True, nlist=nlist, train_size=train, kmeans_iterations=10
    )
    build_ivf = time.perf_counter() - start
    print(f"IVF: nlist {nlist}, k-means on {train:,} vectors, build {build_ivf:.1f} s")

    chosen = None
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        ivf.nprobe = nprobe
        ivf.search(queries[:10], args.k)
        start = time.perf_counter()
        _, found = ivf.search(queries, args.k)
        elapsed = time.perf_counter() - start
        recall = recall_at(found, truth)
        qps = args.queries / elapsed
        ivf_flops = 2 * args.dim * (nlist + min(nprobe, nlist) * args.n / nlist) * args.queries
        print(
            f"IVF nprobe {nprobe:>3}: {qps:,.1f} queries/s "
            f"({qps / exact_qps:.1f}x exact), recall@{args.k} {recall:.4f}, "
            f"{achieved(ivf_flops, elapsed, gemm)}"
        )
        if chosen is None and recall >= 0.95:
            chosen = (nprobe, qps, recall)
        elif chosen is not None and nprobe >= 4 * chosen[0]:
            break  # two more points show the trade-off; larger nprobe only slows down
    if chosen is None:
        print("target recall@10 >= 0.95 not reached")
    else:
        nprobe, qps, recall = chosen
        print(
            f"result: n={args.n:,} d={args.dim}: exact {exact_qps:,.1f} q/s; "
            f"IVF nlist {nlist} nprobe {nprobe} {qps:,.1f} q/s ({qps / exact_qps:.1f}x), "
            f"recall@{args.k} {recall:.4f} (target >= 0.95)"
        )


if __name__ == "__main__":
    main()
