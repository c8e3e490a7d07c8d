"""Checkpoints that survive a killed run: atomic writes and the full training state."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

LAST = "last.pt"  # in a run folder: everything needed to continue after the last full epoch


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, then rename it over `path`.

    A run killed while writing leaves the previous file whole: a rename within one folder
    either happens completely or not at all.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_meta(cfg) -> dict:
    """What a checkpoint must agree with its config.json on."""
    return {"backbone": cfg.model.backbone, "modality": cfg.model.modality,
            "text_model": cfg.model.text_model, "labels": cfg.labels}


def rng_states(generators: list[torch.Generator]) -> dict:
    """Python, NumPy, torch (CPU and CUDA) and loader generator states."""
    return {
        "python": random.getstate(), "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": [g.get_state() for g in generators],
    }


def restore_rng_states(states: dict, generators: list[torch.Generator]) -> None:
    """Inverse of `rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    for generator, state in zip(generators, states["generators"]):
        generator.set_state(state)


def load(path: str | Path) -> dict:
    """A checkpoint written by this package (tensors, numbers, strings and RNG states)."""
    # NOTE: weights_only=False because NumPy's RNG state is a tuple holding an array; these
    # files are written by this package into the user's own run folder.
    return torch.load(Path(path), map_location="cpu", weights_only=False)
