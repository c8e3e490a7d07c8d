"""A small generated dataset in SemArt's layout, for the quick start and the tests.

Every painting's image and description carry signal for all four tasks, with noise, so a
short CPU run ends well above chance but below perfect:
  type      -> the motif drawn (oval sitter, horizon, cross, objects on a ledge, small figures)
  school    -> the background hue
  timeframe -> how light the motif is
  medium    -> a surface texture (weave, grain, plaster speckle, smooth, sheen)
The descriptions mention each attribute in words most of the time, never always.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .data import COLUMNS, GENERATED_MARKER, SPLIT_FILES

TYPES = ("portrait", "landscape", "religious", "still-life", "genre")
SCHOOLS = ("Italian", "Dutch", "French", "Flemish", "Spanish")
TIMEFRAMES = ("1451-1500", "1501-1550", "1601-1650", "1701-1750", "1801-1850")
# One TECHNIQUE per medium the label rules map it to.
TECHNIQUES = {
    "canvas": "Oil on canvas, {h} x {w} cm",
    "wood": "Oil on oak panel, {h} x {w} cm",
    "wall": "Fresco",
    "paper": "Pastel on paper, {h} x {w} cm",
    "metal": "Oil on copper, {h} x {w} cm",
}
MEDIA = tuple(TECHNIQUES)

_TYPE_WORDS = {
    "portrait": ["the sitter looks out at the viewer", "a likeness of a nobleman"],
    "landscape": ["hills and a river under a wide sky", "a view of the countryside"],
    "religious": ["the Virgin and saints", "a scene from the life of Christ"],
    "still-life": ["fruit and a glass on a ledge", "flowers in a vase"],
    "genre": ["peasants at a village feast", "a scene of everyday life in a tavern"],
}
_SCHOOL_WORDS = {
    "Italian": ["Florence", "Venice"], "Dutch": ["Haarlem", "Amsterdam"],
    "French": ["Paris", "Lyon"], "Flemish": ["Antwerp", "Bruges"], "Spanish": ["Seville", "Madrid"],
}
_MEDIUM_WORDS = {
    "canvas": "the canvas", "wood": "the panel", "wall": "the wall of the chapel",
    "paper": "the sheet of paper", "metal": "the copper plate",
}
_FILLER = [
    "The composition is balanced.", "It was restored in the last century.",
    "The attribution has been debated.", "The colours are well preserved.",
    "It entered the collection in 1890.", "Its provenance is unknown.",
]
SPLIT_SIZES = {"train": 320, "val": 80, "test": 80}


def make_sample(out_dir: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write semart_{train,val,test}.csv, Images/ and a marker saying the data is generated."""
    out_dir = Path(out_dir)
    images = out_dir / "Images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = sizes or SPLIT_SIZES
    counter = 0
    for split, n_rows in sizes.items():
        rows = []
        for _ in range(n_rows):
            counter += 1
            rows.append(_painting(counter, rng, images))
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        frame.to_csv(out_dir / SPLIT_FILES[split], sep="\t", index=False, encoding="latin-1")
    (out_dir / GENERATED_MARKER).write_text(
        "GENERATED DATA, NOT SEMART. Written by `semart-mtl make-sample` (seed "
        f"{seed}): synthetic paintings whose figures say nothing about real paintings.\n"
    )
    return out_dir


def _painting(number: int, rng: np.random.Generator, images: Path) -> dict:
    kind = rng.choice(TYPES)
    school = rng.choice(SCHOOLS)
    t = int(rng.integers(len(TIMEFRAMES)))
    medium = rng.choice(MEDIA)
    name = f"{number:05d}-sample.jpg"
    _draw(kind, SCHOOLS.index(school), t, medium, rng).save(images / name, quality=90)

    start = int(TIMEFRAMES[t][:4])
    year = start + int(rng.integers(50))
    h, w = int(rng.integers(30, 200)), int(rng.integers(30, 200))
    return {
        "IMAGE_FILE": name,
        "DESCRIPTION": _description(kind, school, year, medium, rng),
        "AUTHOR": f"SAMPLE, Painter {number % 37}",
        "TITLE": f"Generated painting {number}",
        "TECHNIQUE": TECHNIQUES[medium].format(h=h, w=w),
        "DATE": str(year) if rng.random() < 0.8 else "-",
        "TYPE": kind, "SCHOOL": school, "TIMEFRAME": TIMEFRAMES[t],
    }


def _description(kind, school, year, medium, rng) -> str:
    parts = []
    if rng.random() < 0.7:
        parts.append(f"The painting shows {rng.choice(_TYPE_WORDS[kind])}.")
    if rng.random() < 0.6:
        parts.append(f"The master worked in {rng.choice(_SCHOOL_WORDS[school])}.")
    if rng.random() < 0.5:
        parts.append(f"It was painted around {year}.")
    if rng.random() < 0.5:
        parts.append(f"The paint lies on {_MEDIUM_WORDS[medium]}.")
    parts += list(rng.choice(_FILLER, size=int(rng.integers(1, 4)), replace=False))
    rng.shuffle(parts)
    return " ".join(parts)


def _draw(kind: str, school: int, timeframe: int, medium: str, rng) -> Image.Image:
    width, height = 160, 200
    # Background hue by school, with jitter so schools overlap a little.
    hue = (school / len(SCHOOLS) + rng.normal(0, 0.03)) % 1.0
    base = Image.new("HSV", (width, height), (int(hue * 255), 140, 170)).convert("RGB")
    draw = ImageDraw.Draw(base)

    # Motif lightness by timeframe: later paintings are drawn lighter.
    tone = int(40 + 45 * timeframe + rng.normal(0, 12))
    colour = (tone, tone, int(tone * 0.9))
    cx, cy = width // 2 + int(rng.integers(-15, 16)), height // 2 + int(rng.integers(-15, 16))
    if kind == "portrait":
        draw.ellipse([cx - 35, cy - 50, cx + 35, cy + 50], fill=colour)
    elif kind == "landscape":
        draw.rectangle([0, cy, width, height], fill=colour)
    elif kind == "religious":
        draw.rectangle([cx - 8, cy - 60, cx + 8, cy + 60], fill=colour)
        draw.rectangle([cx - 40, cy - 30, cx + 40, cy - 14], fill=colour)
    elif kind == "still-life":
        for _ in range(3):
            x = int(rng.integers(10, width - 40))
            draw.rectangle([x, height - 70, x + 30, height - 20], fill=colour)
    else:  # genre: many small figures
        for _ in range(12):
            x, y = int(rng.integers(5, width - 10)), int(rng.integers(5, height - 10))
            draw.ellipse([x, y, x + 9, y + 9], fill=colour)

    pixels = np.asarray(base, dtype=np.float32)
    pixels += _texture(medium, height, width, rng)[..., None]
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _texture(medium: str, height: int, width: int, rng) -> np.ndarray:
    # Coarse patterns, so they survive resizing to small training sizes and random crops.
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if medium == "canvas":  # weave
        return 30 * np.sign(np.sin(x * 0.6) * np.sin(y * 0.6))
    if medium == "wood":  # vertical grain
        return 35 * np.sin(x * 0.35 + 2 * np.sin(y * 0.03 + rng.random() * 6))
    if medium == "wall":  # plaster blotches
        blotches = rng.random((height // 8 + 1, width // 8 + 1)) > 0.7
        return 40 * np.kron(blotches, np.ones((8, 8)))[:height, :width]
    if medium == "metal":  # horizontal sheen
        return 45 * np.sin(y * 0.15 + rng.random() * 6)
    return np.zeros((height, width), np.float32)  # paper: smooth
