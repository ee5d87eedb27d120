"""Speed of the synthetic generator on one core, against the 2,000 images/minute target.

Generates each domain end to end (render, JPEG-encode, write, meta.json) into a temporary
folder at 128x64 with every math library limited to one thread, and prints images per
second and per minute and the ratio to the target.

    .venv/bin/python benchmarks/synth_speed.py [--ids 50] [--images-per-id 12] [--size 128x64]
"""

from __future__ import annotations

import os

# Before numpy is imported: one core, as the target is stated for one core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

TARGET_PER_MINUTE = 2000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=50)
    parser.add_argument("--images-per-id", type=int, default=12)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--size", default="128x64")
    parser.add_argument("--domains", default="AB")
    args = parser.parse_args()

    from crossreid.data.synthetic import SyntheticConfig, generate_domain, parse_size

    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        for domain in args.domains:
            config = SyntheticConfig(
                domain=domain,
                num_ids=args.ids,
                images_per_id=args.images_per_id,
                num_cameras=args.cameras,
                size=size,
            )
            start = time.perf_counter()
            meta = generate_domain(config, Path(tmp) / domain, progress=False)
            seconds = time.perf_counter() - start
            images = sum(c["images"] for c in meta["counts"].values())
            per_second = images / seconds
            per_minute = 60.0 * per_second
            print(
                f"synth_speed: domain {domain} {size[0]}x{size[1]}, 1 thread: {images} images "
                f"in {seconds:.2f} s = {per_second:.0f} images/s = {per_minute:,.0f} images/min "
                f"({per_minute / TARGET_PER_MINUTE:.1f}x the {TARGET_PER_MINUTE:,.0f}/min target)"
            )


if __name__ == "__main__":
    main()
