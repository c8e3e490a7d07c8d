"""Shared fixtures: a small generated sample, tiny CPU configs, the real rows when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the hub: everything is built from small configs or local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from semart_mtl.config import SCRATCH_TEXT_MODEL, RunConfig  # noqa: E402
from semart_mtl.sample import make_sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get("SEMART_REAL", REPO.parent / "shared" / "semart-real"))
requires_real = pytest.mark.skipif(
    not (REAL_DIR / "semart_val.csv").is_file(), reason=f"real SemArt rows not at {REAL_DIR}"
)
SMALL_SAMPLE = {"train": 160, "val": 40, "test": 24}


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A generated sample in SemArt layout, small enough for unit tests."""
    return make_sample(tmp_path_factory.mktemp("sample"), seed=0, sizes=SMALL_SAMPLE)


def tiny_config(data_dir: Path, out: Path, **model) -> RunConfig:
    """A run that takes seconds on a CPU: random init, scratch text encoder, small images."""
    cfg = RunConfig()
    cfg.data.data_dir = str(data_dir)
    cfg.data.image_size = 64
    cfg.data.max_length = 48
    cfg.data.num_workers = 0
    cfg.data.cache_dir = str(Path(out).parent / "cache")  # shared by a test's runs, not the repo's
    cfg.model.pretrained = False
    cfg.model.text_model = SCRATCH_TEXT_MODEL
    cfg.model.fusion_dim = 64
    for key, value in model.items():
        setattr(cfg.model, key, value)
    cfg.train.epochs = 1
    cfg.train.batch_size = 16
    cfg.train.device = "cpu"
    cfg.train.out = str(out)
    return cfg
