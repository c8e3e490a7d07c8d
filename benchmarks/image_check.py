"""How long the pre-flight image check takes per mode, projected to SemArt's 21,382 paintings.

Writes N generated JPEGs of a typical SemArt size (about 1000 x 800) into a temporary folder
and times `checks.check_images` in each mode against a plain single-thread full decode.

    PYTHONPATH=src python benchmarks/image_check.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from semart_mtl.checks import check_images
from semart_mtl.config import IMAGE_CHECKS

SEMART_PAINTINGS = 19_244 + 1_069 + 1_069  # train + val + test


def write_jpegs(folder: Path, n: int) -> list[tuple[str, int, str]]:
    """N noisy 1000 x 800 JPEGs; noise keeps them as large as real photographs of paintings."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (800, 1000, 3), dtype=np.uint8)
    rows = []
    for i in range(n):
        name = f"{i:05d}.jpg"
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / name, quality=90)
        rows.append(("bench.csv", i + 2, name))
    return rows


def full_decode(folder: Path, rows) -> None:
    for _, _, name in rows:
        with Image.open(folder / name) as image:
            image.load()


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = write_jpegs(folder, n)
        size = sum((folder / r[2]).stat().st_size for r in rows) / n / 1e3
        print(f"{n} JPEGs of 1000 x 800, {size:.0f} kB each")
        start = time.perf_counter()
        full_decode(folder, rows)
        baseline = time.perf_counter() - start
        print(f"{'full decode, 1 thread':>24}: {n / baseline:7.1f} img/s, "
              f"21,382 paintings in {SEMART_PAINTINGS / n * baseline:6.0f} s")
        for mode in IMAGE_CHECKS:
            start = time.perf_counter()
            bad = check_images(rows, folder, mode, progress=False)
            seconds = time.perf_counter() - start
            assert not bad, bad
            print(f"{'check ' + mode:>24}: {n / seconds:7.1f} img/s, 21,382 paintings in "
                  f"{SEMART_PAINTINGS / n * seconds:6.0f} s, {baseline / seconds:5.1f}x the "
                  "full decode")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
