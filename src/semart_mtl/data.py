"""SemArt rows in, tensors out: reading the CSVs, the label rules, images and batches."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .config import TASKS, DataConfig

COLUMNS = (
    "IMAGE_FILE", "DESCRIPTION", "AUTHOR", "TITLE", "TECHNIQUE", "DATE", "TYPE", "SCHOOL",
    "TIMEFRAME",
)
# Column holding each task's label; MEDIUM is derived from TECHNIQUE on reading.
TASK_COLUMNS = {"type": "TYPE", "school": "SCHOOL", "timeframe": "TIMEFRAME", "medium": "MEDIUM"}
IGNORE_INDEX = -100  # a label unseen in training: left out of that task's loss and metrics
SPLIT_FILES = {"train": "semart_train.csv", "val": "semart_val.csv", "test": "semart_test.csv"}
# Written by `make-sample` so that every run on generated data can say so.
GENERATED_MARKER = "GENERATED.txt"

# --- medium from technique ---------------------------------------------------------------

MEDIA = ("canvas", "wood", "wall", "paper", "metal", "stone", "other")
_WALL_WORDS = {"fresco", "frescoes", "mural", "wall", "plaster", "sinopia"}
_SUPPORT_WORDS = {
    "canvas": {"canvas", "linen"},
    "wood": {
        "panel", "wood", "oak", "poplar", "lime", "limewood", "pine", "fir", "walnut", "beech",
        "beechwood", "spruce", "chestnut", "board",
    },
    "paper": {"paper", "cardboard", "card", "parchment", "vellum"},
    "metal": {"copper", "tin", "silver", "iron", "zinc", "brass", "bronze", "metal"},
    "stone": {"slate", "marble", "stone", "alabaster", "lapis"},
}
_MEDIUM_OF_WORD = {word: medium for medium, words in _SUPPORT_WORDS.items() for word in words}
# Words after which the first support is described as resting on a second one.
_SECOND_SUPPORT = re.compile(r"\b(?:transferred|laid|mounted|fixed|pasted|glued|stuck)\b")


def medium_from_technique(technique: str) -> str:
    """The support a painting lies on now, from the part of TECHNIQUE before the first comma."""
    head = str(technique).split(",")[0].lower()
    words = re.findall(r"[a-z]+", head)

    # Wall paintings stay wall paintings, even when detached or transferred.
    if _WALL_WORDS.intersection(words):
        return "wall"

    # "X on Y transferred to Z": the paint now lies on Z.
    moved = re.search(r"\btransferred (?:on)?to\b(.*)", head)
    if moved:
        phrase = moved.group(1)
    else:
        # "on Y transferred from Z", "on Y laid down on Z", "on Y on Z": the support is Y.
        head = _SECOND_SUPPORT.split(head)[0]
        parts = re.split(r"\bon(?:to)?\b", head)
        phrase = parts[1] if len(parts) > 1 else head

    # In a noun phrase the support noun comes last ("copper beech panel", "blue paper").
    for word in reversed(re.findall(r"[a-z]+", phrase)):
        medium = _MEDIUM_OF_WORD.get(word) or _MEDIUM_OF_WORD.get(word.removesuffix("s"))
        if medium:
            return medium
    return "other"


# --- reading the CSVs --------------------------------------------------------------------


class DataError(ValueError):
    """Input data that cannot be used, with the file (and row) at fault."""


def read_split(path: str | Path) -> pd.DataFrame:
    """One SemArt CSV (tab-separated, latin-1) with clean descriptions and a MEDIUM column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    # NOTE: quoting is off because SemArt descriptions contain bare double quotes.
    frame = pd.read_csv(
        path, sep="\t", encoding="latin-1", dtype=str, keep_default_na=False, quoting=3
    )
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; found {list(frame.columns)}")

    frame["DESCRIPTION"] = frame["DESCRIPTION"].map(clean_text)
    # "-" means unknown in SemArt; keep it as missing rather than as a date.
    frame["DATE"] = frame["DATE"].str.strip().replace({"-": None, "": None})
    for column in ("TYPE", "SCHOOL", "TIMEFRAME"):
        frame[column] = frame[column].str.strip()
    frame["MEDIUM"] = frame["TECHNIQUE"].map(medium_from_technique)
    return frame


def clean_text(text: str) -> str:
    """Unescape HTML entities and fold runs of white space."""
    return " ".join(html.unescape(text).split())


@dataclass
class Splits:
    """The three splits of a run and where their images are."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame | None
    images_dir: Path
    val_carved: bool  # True when val was carved from the training rows


def split_paths(cfg: DataConfig) -> dict[str, Path | None]:
    """CSV path per split: explicit paths win over the data folder's files."""
    root = Path(cfg.data_dir) if cfg.data_dir else None
    explicit = {"train": cfg.train_csv, "val": cfg.val_csv, "test": cfg.test_csv}
    paths: dict[str, Path | None] = {}
    for split, name in SPLIT_FILES.items():
        if explicit[split]:
            paths[split] = Path(explicit[split])
        elif root is not None and (root / name).is_file():
            paths[split] = root / name
        else:
            paths[split] = None
    if paths["train"] is None:
        where = f"{root / SPLIT_FILES['train']}" if root else "--train-csv"
        raise DataError(f"no training CSV: expected {where} (or pass --train-csv)")
    return paths


def images_dir_of(cfg: DataConfig) -> Path:
    """The folder holding the paintings' JPEGs."""
    if cfg.images_dir:
        return Path(cfg.images_dir)
    if cfg.data_dir:
        return Path(cfg.data_dir) / "Images"
    return Path(split_paths(cfg)["train"]).parent / "Images"


def is_generated(cfg: DataConfig) -> bool:
    """Whether the training CSV sits in a folder written by `make-sample`."""
    return (Path(split_paths(cfg)["train"]).parent / GENERATED_MARKER).is_file()


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Read train/val/test; carve a stratified validation part when none is given."""
    paths = split_paths(cfg)
    train = read_split(paths["train"])
    val_carved = paths["val"] is None
    if val_carved:
        train, val = carve_validation(train, cfg.val_fraction, seed)
    else:
        val = read_split(paths["val"])
    test = read_split(paths["test"]) if paths["test"] is not None else None
    return Splits(train, val, test, images_dir_of(cfg), val_carved)


def carve_validation(
    frame: pd.DataFrame, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split of `frame`, stratified by TYPE where every type has at least two rows."""
    if len(frame) < 2:
        raise DataError(f"cannot carve a validation part from {len(frame)} training row(s)")
    n_val = max(1, round(fraction * len(frame)))
    strata = frame["TYPE"]
    # A class of one row cannot be split in two; such rows are pooled into one stratum,
    # and when even that cannot be honoured the split is simply shuffled.
    counts = strata.map(strata.value_counts())
    strata = strata.where(counts >= 2, "__rare__")
    feasible = strata.value_counts().min() >= 2 and n_val >= strata.nunique()
    feasible = feasible and len(frame) - n_val >= strata.nunique()
    train, val = train_test_split(
        frame, test_size=n_val, random_state=seed, stratify=strata if feasible else None
    )
    return train.reset_index(drop=True), val.reset_index(drop=True)


# --- labels ------------------------------------------------------------------------------


def fit_labels(train: pd.DataFrame) -> dict[str, list[str]]:
    """Sorted class names per task, from the training rows only."""
    return {task: sorted(train[TASK_COLUMNS[task]].unique()) for task in TASKS}


def encode_labels(
    frame: pd.DataFrame, labels: dict[str, list[str]]
) -> tuple[np.ndarray, dict[str, int]]:
    """(N, T) class indices; unseen labels become IGNORE_INDEX and are counted per task."""
    targets = np.full((len(frame), len(TASKS)), IGNORE_INDEX, dtype=np.int64)
    unseen = {}
    for t, task in enumerate(TASKS):
        index = {name: i for i, name in enumerate(labels[task])}
        codes = frame[TASK_COLUMNS[task]].map(index)
        unseen[task] = int(codes.isna().sum())
        targets[:, t] = codes.fillna(IGNORE_INDEX).astype(np.int64).to_numpy()
    return targets, unseen


# --- images ------------------------------------------------------------------------------


def load_image(path: str | Path, draft: int | None = None) -> Image.Image:
    """A painting as upright RGB, whatever its mode and EXIF orientation.

    `draft`: a JPEG may be decoded at a reduced scale whose sides stay at least this long.
    """
    with Image.open(path) as image:
        if draft is not None:
            image.draft("RGB", (draft, draft))
        image = ImageOps.exif_transpose(image)
        # Palette and alpha images go through RGBA so transparency is resolved, not garbled.
        if image.mode in ("P", "PA", "LA", "RGBA"):
            image = image.convert("RGBA")
        return image.convert("RGB")


def build_transforms(
    size: int, mean: tuple, std: tuple, crop_pct: float, train: bool
) -> v2.Compose:
    """Augmentation for training, resize and centre crop for evaluation."""
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if not train:
        resize = int(round(size / crop_pct))
        return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), *to_tensor])
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(10),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
        *to_tensor,
        v2.RandomErasing(p=0.25),
    ])


# --- dataset and batches -----------------------------------------------------------------


class PaintingDataset(Dataset):
    """Rows of one split: image tensor, description token ids and the four class indices."""

    def __init__(
        self,
        frame: pd.DataFrame,
        targets: np.ndarray,
        images_dir: Path | None,
        transform=None,
        token_ids: list[list[int]] | None = None,
        cached_text=None,
    ):
        # images_dir None: a text-only run; token_ids None: an image-only run.
        # cached_text (a text_cache.CachedText): the frozen encoder's output per row, used
        # instead of the token ids.
        self.image_files = frame["IMAGE_FILE"].tolist()
        self.targets = torch.as_tensor(targets)
        self.images_dir = images_dir
        self.transform = transform
        self.token_ids = token_ids
        self.cached_text = cached_text

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        item = {"labels": self.targets[i], "index": i}
        if self.images_dir is not None:
            item["image"] = self.transform(load_image(self.images_dir / self.image_files[i]))
        if self.cached_text is not None:
            item[self.cached_text.item_key] = self.cached_text[i]
        elif self.token_ids is not None:
            item["input_ids"] = torch.as_tensor(self.token_ids[i])
        return item


def collate(items: list[dict], pad_id: int = 0) -> dict:
    """Stack a batch; descriptions are padded to the longest one in the batch only."""
    batch = {
        "labels": torch.stack([it["labels"] for it in items]),
        "index": torch.as_tensor([it["index"] for it in items]),
    }
    if "image" in items[0]:
        batch["image"] = torch.stack([it["image"] for it in items])
    if "text_vector" in items[0]:
        batch["text_vector"] = torch.stack([it["text_vector"] for it in items])  # (B, D)
    # Token ids (B, L) or cached hidden states (B, L, D), with the mask of real tokens.
    for key, padding in (("input_ids", pad_id), ("hidden", 0.0)):
        if key in items[0]:
            rows = [it[key] for it in items]
            batch[key] = torch.nn.utils.rnn.pad_sequence(
                rows, batch_first=True, padding_value=padding
            )
            lengths = torch.as_tensor([len(x) for x in rows])
            positions = torch.arange(batch[key].shape[1])
            batch["attention_mask"] = (positions[None, :] < lengths[:, None]).long()
    return batch
