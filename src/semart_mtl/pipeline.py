"""Wiring shared by training and evaluation: text model source, datasets and loaders."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pandas as pd
import timm
import torch
from torch.utils.data import DataLoader

from .config import SCRATCH_TEXT_MODEL, RunConfig, TrainConfig
from .data import PaintingDataset, build_transforms, collate, encode_labels
from .text import build_scratch_text_model, go_offline, hub_reachable

TEXT_DIR = "text_encoder"  # in a run folder: the text model's config and tokenizer


def needs_images(cfg: RunConfig) -> bool:
    return cfg.model.modality in ("image", "fusion")


def needs_text(cfg: RunConfig) -> bool:
    return cfg.model.modality in ("text", "fusion")


def may_download(cfg: RunConfig) -> bool:
    """Whether building this run's model could fetch anything from the hub."""
    image = needs_images(cfg) and cfg.model.pretrained and cfg.model.image_weights is None
    text_name = cfg.model.text_model
    text = needs_text(cfg) and text_name != SCRATCH_TEXT_MODEL and not Path(text_name).is_dir()
    return image or text


def settle_hub_access(cfg: RunConfig) -> None:
    """With no hub in reach, switch the hub clients to cache-only so a miss fails at once."""
    if may_download(cfg) and not hub_reachable():
        go_offline()


def text_source(cfg: RunConfig, run_dir: Path, train_descriptions: list[str], is_main: bool):
    """Where this run's text model and tokenizer come from, building 'scratch' on demand."""
    if cfg.model.text_model != SCRATCH_TEXT_MODEL:
        return cfg.model.text_model
    folder = run_dir / TEXT_DIR
    if is_main:
        build_scratch_text_model(train_descriptions, folder)
    return str(folder)


def image_settings(backbone: torch.nn.Module, image_size: int | None) -> dict:
    """Input size, mean, std and crop fraction from the backbone's timm data config."""
    resolved = timm.data.resolve_model_data_config(backbone)
    size = image_size or resolved["input_size"][-1]
    return {"size": size, "mean": resolved["mean"], "std": resolved["std"],
            "crop_pct": resolved.get("crop_pct", 0.875)}


def make_dataset(
    cfg: RunConfig, frame: pd.DataFrame, images_dir: Path, tokenizer, image_cfg: dict | None,
    train: bool,
) -> tuple[PaintingDataset, dict[str, int]]:
    """Dataset of one split and the per-task count of labels unseen in training."""
    targets, unseen = encode_labels(frame, cfg.labels)
    transform = build_transforms(**image_cfg, train=train) if image_cfg else None
    token_ids = None
    if tokenizer is not None:
        encoded = tokenizer(frame["DESCRIPTION"].tolist(), truncation=True,
                            max_length=cfg.data.max_length)
        token_ids = encoded["input_ids"]
    dataset = PaintingDataset(
        frame, targets, images_dir if image_cfg else None, transform, token_ids
    )
    return dataset, unseen


def default_workers() -> int:
    """Loader processes: leave a core to the main process."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: PaintingDataset, cfg: RunConfig, shuffle: bool, pad_id: int = 0
) -> DataLoader:
    workers = cfg.data.num_workers if cfg.data.num_workers is not None else default_workers()
    # Without images there is nothing worth a worker process.
    workers = workers if dataset.images_dir is not None else 0
    return DataLoader(
        dataset, batch_size=cfg.train.batch_size, shuffle=shuffle, num_workers=workers,
        # Training drops a ragged last batch: batch norm cannot standardise a single row.
        drop_last=shuffle and len(dataset) > cfg.train.batch_size,
        collate_fn=partial(collate, pad_id=pad_id), pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def make_accelerator(cfg: TrainConfig):
    """Accelerator for the requested device; bf16 autocast on a GPU that supports it."""
    from accelerate import Accelerator

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is visible")
    cpu = cfg.device == "cpu"
    precision = cfg.mixed_precision
    if precision == "auto":
        gpu = not cpu and torch.cuda.is_available()
        precision = "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=cpu, mixed_precision=precision)
