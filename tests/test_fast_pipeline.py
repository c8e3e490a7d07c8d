"""Image cache, length-grouped batches, and training with the caches on and off."""

from __future__ import annotations

import os
import platform
import resource
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from semart_mtl.data import DataError, PaintingDataset
from semart_mtl.evaluate import evaluate_run
from semart_mtl.image_cache import build_image_cache, cache_short_side
from semart_mtl.memory import keep_freed_memory
from semart_mtl.pipeline import default_workers, set_up_cpu_training
from semart_mtl.text_cache import HiddenStore
from semart_mtl.train import train

from conftest import REAL_DIR, requires_real, tiny_config


def test_cache_short_side_is_what_evaluation_resizes_to():
    assert cache_short_side(224, 0.875) == 256
    assert cache_short_side(224, 0.9) == 256  # never below size / 0.875
    assert cache_short_side(224, 1.0) == 256


def write_image(path, size, colour):
    Image.new("RGB", size, colour).save(path, quality=90)


def test_image_cache_resizes_once_and_rebuilds_changed_sources(tmp_path):
    source = tmp_path / "Images"
    source.mkdir()
    write_image(source / "a.jpg", (400, 300), (200, 10, 10))
    write_image(source / "b.jpg", (50, 60), (10, 200, 10))  # smaller: never enlarged
    names = ["a.jpg", "b.jpg", "a.jpg"]

    folder = build_image_cache(source, names, 64, tmp_path / "cache", show_progress=False)
    with Image.open(folder / "a.jpg") as a, Image.open(folder / "b.jpg") as b:
        assert a.size == (85, 64) and b.size == (50, 60)
    stamp = (folder / "b.jpg").stat().st_mtime_ns

    # A second run reuses the copies; a changed source is rebuilt.
    write_image(source / "a.jpg", (300, 600), (10, 10, 200))
    os.utime(source / "a.jpg", ns=(1, 10**18))
    again = build_image_cache(source, names, 64, tmp_path / "cache", show_progress=False)
    assert again == folder
    assert (folder / "b.jpg").stat().st_mtime_ns == stamp
    with Image.open(folder / "a.jpg") as a:
        assert a.size == (64, 128)
        assert a.getpixel((30, 60))[2] > 150  # the new picture, not the old one
    # Another size is another folder.
    assert build_image_cache(source, names, 32, tmp_path / "cache", show_progress=False) != folder


def test_image_cache_names_the_bad_file(tmp_path):
    source = tmp_path / "Images"
    source.mkdir()
    (source / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        build_image_cache(source, ["broken.jpg"], 64, tmp_path / "cache", show_progress=False)
    with pytest.raises(DataError, match="absent.jpg"):
        build_image_cache(source, ["absent.jpg"], 64, tmp_path / "cache", show_progress=False)


@requires_real
def test_image_cache_on_real_paintings(tmp_path):
    names = sorted(p.name for p in (REAL_DIR / "Images").iterdir())[:3]
    folder = build_image_cache(REAL_DIR / "Images", names, 256, tmp_path, show_progress=False)
    for name in names:
        with Image.open(folder / name) as copy, Image.open(REAL_DIR / "Images" / name) as full:
            assert min(copy.size) == 256
            ratio = full.size[0] / full.size[1]
            assert copy.size[0] / copy.size[1] == pytest.approx(ratio, rel=0.01)


def test_grouped_loader_batches_similar_lengths_and_covers_every_row(sample_dir, tmp_path):
    from semart_mtl.pipeline import make_loader

    lengths = torch.randint(5, 500, (203,), generator=torch.Generator().manual_seed(0)).tolist()
    dataset = PaintingDataset(pd.DataFrame({"IMAGE_FILE": ["x"] * 203}),
                              np.zeros((203, 4), dtype=np.int64), None,
                              token_ids=[[1] * n for n in lengths])
    cfg = tiny_config(sample_dir, tmp_path / "run")
    cfg.train.batch_size = 8
    cfg.data.group_by_length = True
    loader = make_loader(dataset, cfg, shuffle=True)
    epoch = [batch["index"].tolist() for batch in loader]
    rows = [i for b in epoch for i in b]
    assert len(rows) == len(set(rows)) == 200  # the ragged last batch of 3 is dropped
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch)
    plain = [list(range(200))[s:s + 8] for s in range(0, 200, 8)]
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain)
    assert spread < plain_spread / 3
    assert [batch["index"].tolist() for batch in loader] != epoch  # a new order every epoch


def read_history(run):
    return pd.read_csv(run / "history.csv")


def test_text_cache_does_not_change_what_is_learned(sample_dir, tmp_path):
    """Same seed, text only: the loss with the cache matches the loss without it."""
    runs = {}
    for cached in (False, True):
        cfg = tiny_config(sample_dir, tmp_path / f"cached-{cached}", modality="text")
        cfg.data.text_cache = cached
        runs[cached] = read_history(train(cfg))
    cache = tmp_path / "cache" / "text"
    assert len(list(cache.iterdir())) == 1
    # Losses, not accuracies: an untrained model's near-ties may flip an argmax.
    for column in ("train_loss", "val_loss"):
        assert runs[True][column].iloc[0] == pytest.approx(runs[False][column].iloc[0], abs=2e-3)


def test_fusion_training_with_every_speed_option(sample_dir, tmp_path):
    cfg = tiny_config(sample_dir, tmp_path / "run", modality="fusion", text_trainable_layers=0)
    cfg.data.group_by_length = True
    cfg.data.image_cache_size = 48
    run = train(cfg)
    assert (run / "metrics.json").is_file()
    images = list((tmp_path / "cache" / "images").iterdir())
    assert len(images) == 1 and images[0].name.endswith("-48")
    with Image.open(next(images[0].glob("*.jpg"))) as copy:
        assert min(copy.size) == 48
    # Rebuilt from its folder, the trained model finds its frozen output in the same store.
    stores = list((tmp_path / "cache" / "text").iterdir())
    assert len(stores) == 1
    entries = len(HiddenStore(stores[0], dim=128))
    assert evaluate_run(run, "val")["split"] == "val"
    assert list((tmp_path / "cache" / "text").iterdir()) == stores
    assert len(HiddenStore(stores[0], dim=128)) == entries


def test_channels_last_backbone_computes_the_same_features():
    from semart_mtl.model import ImageEncoder

    torch.manual_seed(0)
    encoder = ImageEncoder("efficientnet_b0", pretrained=False, freeze=0.5).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = encoder(images)
        encoder.use_channels_last()
        after = encoder(images)
    assert encoder.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("device_type", "cores", "workers"), [
    ("cpu", 1, 0), ("cpu", 2, 2), ("cpu", 16, 2), ("cpu", 64, 8),
    ("cuda", 1, 0), ("cuda", 2, 1), ("cuda", 16, 15), ("cuda", 64, 16),
])
def test_loader_workers_follow_the_machine(monkeypatch, device_type, cores, workers):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_workers(device_type) == workers


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_training_computes_on_every_core_shared_by_processes(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert set_up_cpu_training() == torch.get_num_threads() == 4
    assert set_up_cpu_training(processes=2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    assert set_up_cpu_training() == 3  # the user's setting stands


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's allocator only")
def test_freed_cpu_tensors_are_reused_without_page_faults():
    assert keep_freed_memory()
    n = 2**24  # 64 MiB of float32: glibc would map it afresh, and fault it in, every time
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(n)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # The heap takes a few rounds to settle on a block it reuses; then nothing is faulted in.
    assert max(faults[-5:]) < n * 4 // 4096 // 10, f"page faults per 64 MiB tensor: {faults}"
