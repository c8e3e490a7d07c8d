"""One-time resized copies of the paintings, so an epoch decodes small JPEGs, not full ones.

SemArt's JPEGs are about 1000 x 1300 pixels, and a model sees 224. Decoding the full file
every epoch costs more than the crop and the augmentation together. Each image is decoded
once (JPEG draft mode: the decoder itself scales down by a power of two), resized so that its
shorter side is a little above the training size, and saved under the cache folder with its
own name, so the dataset just reads another folder. Augmentation then runs on the copy as
before. A manifest records each source's size and modification time; a changed source is
rebuilt on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .data import DataError, load_image
from .text_cache import file_lock

MANIFEST = "manifest.json"
JPEG_QUALITY = 95


def cache_short_side(size: int, crop_pct: float) -> int:
    """Shorter side of the copies: what evaluation resizes to before its centre crop."""
    # NOTE: at least size / 0.875 (256 for 224), so random crops keep some resolution to spare.
    return max(size, round(size / min(crop_pct, 0.875)))


def resized_copy(source: Path, target: Path, short_side: int) -> None:
    """Write `source` as an RGB JPEG whose shorter side is `short_side` (never enlarged)."""
    try:
        image = load_image(source, draft=short_side)
    except (OSError, ValueError) as err:
        raise DataError(f"{source}: cannot read image ({err})") from err
    scale = short_side / min(image.size)
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    partial = target.with_name(f".{target.name}.part")
    image.save(partial, format="JPEG", quality=JPEG_QUALITY)
    # A run killed mid-write leaves a .part file, never a truncated copy under the real name.
    os.replace(partial, target)


def build_image_cache(
    images_dir: str | Path, names: list[str], short_side: int, root: str | Path,
    workers: int | None = None, show_progress: bool = True,
) -> Path:
    """Folder of resized copies of `names` from `images_dir`, (re)building what is stale."""
    images_dir = Path(images_dir).resolve()
    tag = hashlib.blake2b(str(images_dir).encode(), digest_size=8).hexdigest()
    folder = Path(root) / "images" / f"{tag}-{short_side}"
    with file_lock(folder):
        manifest_path = folder / MANIFEST
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        todo, stamps = [], {}
        for name in dict.fromkeys(names):
            try:
                stat = (images_dir / name).stat()
            except FileNotFoundError as err:
                raise DataError(f"{images_dir / name}: no such image") from err
            stamps[name] = [stat.st_size, stat.st_mtime_ns]
            if manifest.get(name) != stamps[name] or not (folder / name).is_file():
                todo.append(name)
        if not todo:
            return folder
        workers = workers or os.cpu_count() or 1
        bar = tqdm(total=len(todo), desc=f"resizing images to {short_side}", unit="image",
                   disable=not show_progress)
        # Threads suffice: Pillow releases the GIL while decoding, resizing and encoding.
        try:
            with ThreadPoolExecutor(workers) as pool:
                jobs = pool.map(
                    lambda n: (n, resized_copy(images_dir / n, folder / n, short_side)), todo
                )
                for name, _ in jobs:
                    manifest[name] = stamps[name]
                    bar.update()
        finally:
            bar.close()
            # Keep what was done even when one image failed, so a rerun resumes there.
            partial = folder / f"{MANIFEST}.part"
            partial.write_text(json.dumps(manifest))
            os.replace(partial, manifest_path)
    return folder
