"""Wiring shared by training and evaluation: text model source, datasets and loaders."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pandas as pd
import timm
import torch
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import LengthGroupedSampler

from .config import SCRATCH_TEXT_MODEL, RunConfig, TrainConfig
from .data import PaintingDataset, build_transforms, collate, encode_labels
from .image_cache import build_image_cache, cache_short_side
from .memory import keep_freed_memory
from .text import build_scratch_text_model, go_offline, hub_reachable
from .text_cache import TextCache

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
    train: bool, text_cache: TextCache | None = None,
) -> tuple[PaintingDataset, dict[str, int]]:
    """Dataset of one split and the per-task count of labels unseen in training.

    With a `text_cache` the rows carry the frozen text layers' output (computed now for
    descriptions not cached yet) instead of token ids.
    """
    targets, unseen = encode_labels(frame, cfg.labels)
    transform = build_transforms(**image_cfg, train=train) if image_cfg else None
    token_ids = cached = None
    if tokenizer is not None:
        encoded = tokenizer(frame["DESCRIPTION"].tolist(), truncation=True,
                            max_length=cfg.data.max_length)
        token_ids = encoded["input_ids"]
        if text_cache is not None:
            text_cache.fill(token_ids)
            cached = text_cache.rows(token_ids)
    if image_cfg and cfg.data.image_cache:
        images_dir = cached_images_dir(cfg, frame, images_dir, image_cfg)
    dataset = PaintingDataset(
        frame, targets, images_dir if image_cfg else None, transform, token_ids, cached
    )
    return dataset, unseen


def open_text_cache(cfg: RunConfig, text_encoder) -> TextCache | None:
    """The text cache of this run's encoder, or None when caching is off or nothing to cache."""
    if text_encoder is None or not cfg.data.text_cache:
        return None
    return TextCache(text_encoder, cfg.data.max_length, cfg.data.cache_dir)


def cached_images_dir(
    cfg: RunConfig, frame: pd.DataFrame, images_dir: Path, image_cfg: dict
) -> Path:
    """Folder of resized copies of the split's images, built on first use."""
    side = cfg.data.image_cache_size or cache_short_side(image_cfg["size"], image_cfg["crop_pct"])
    return build_image_cache(images_dir, frame["IMAGE_FILE"].tolist(), side, cfg.data.cache_dir)


def default_workers(device_type: str) -> int:
    """Loader processes for a run on this machine's cores ("cpu" or "cuda" training)."""
    cores = os.cpu_count() or 1
    if device_type == "cpu":
        # A worker prepares cached copies far faster than a CPU trains on them (on 2 cores, 32
        # paintings in about 0.3 s against a 3 s EfficientNet-B0 fusion step), so workers
        # mostly wait. But Accelerate hands out a batch only once the next one is ready, so
        # each epoch starts by waiting for two batches: two workers make them side by side
        # (on 2 cores the first batch came after 0.29 s instead of 0.70 s with one worker).
        # NOTE: measured on 2 cores only; one worker per 8 cores on larger machines is an estimate.
        return 0 if cores == 1 else max(2, cores // 8)
    # A GPU waits on the loader, so every core but the main process's decodes paintings.
    return max(0, min(16, cores - 1))


def use_every_core(processes: int = 1) -> int:
    """Torch computes on all cores, shared among local processes; returns its thread count.

    OMP_NUM_THREADS, where set, is left to decide it.

    NOTE: the loader workers mostly wait (cached copies are cheap to read), so compute does not
    leave them cores: on 2 cores, 2 threads beside one worker trained about 1.6x faster than one
    thread. On a machine busy with other work, threads that outnumber the free cores wait on
    each other at every barrier; set OMP_NUM_THREADS lower there.
    """
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, processes)))
    return torch.get_num_threads()


def set_up_cpu_training(processes: int = 1) -> int:
    """Every core computes and freed tensor memory is kept for reuse; returns the thread count."""
    keep_freed_memory()
    return use_every_core(processes)


def make_loader(
    dataset: PaintingDataset, cfg: RunConfig, shuffle: bool, pad_id: int = 0
) -> DataLoader:
    workers = cfg.data.num_workers
    if workers is None:
        workers = default_workers(training_device_type(cfg.train))
    # Without images there is nothing worth a worker process.
    workers = workers if dataset.images_dir is not None else 0
    generator = torch.Generator().manual_seed(cfg.train.seed)
    batching = {"shuffle": shuffle}
    if shuffle and cfg.data.group_by_length and dataset.token_ids is not None:
        # Shuffled mega-batches sorted by length: little padding, a new order every epoch.
        lengths = [len(ids) for ids in dataset.token_ids]
        batching = {"sampler": LengthGroupedSampler(cfg.train.batch_size, lengths=lengths,
                                                    generator=generator)}
    return DataLoader(
        dataset, batch_size=cfg.train.batch_size, num_workers=workers,
        collate_fn=partial(collate, pad_id=pad_id),
        # Training drops a ragged last batch: batch norm cannot standardise a single row.
        drop_last=shuffle and len(dataset) > cfg.train.batch_size,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None, generator=generator, **batching,
    )


def training_device_type(cfg: TrainConfig) -> str:
    """Where a run with these settings computes: "cpu" or "cuda"."""
    return "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"


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


def speed_up_model(model, cfg: TrainConfig) -> None:
    """Channels-last backbone and, when asked, a compiled one; numbers unchanged."""
    if model.image_encoder is None:
        return
    # NHWC suits GPU tensor cores and oneDNN's CPU convolutions alike: on a 2-core CPU one
    # training step of EfficientNet-B0 (resnet18) at batch 32 took ~25% (~15%) less time.
    model.image_encoder.use_channels_last()
    if cfg.compile:
        # In place, so the state dict keeps its names and checkpoints stay loadable.
        model.image_encoder.backbone.compile()
