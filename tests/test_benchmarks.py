"""The speed benchmarks run end to end (their figures are read, never asserted on)."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest
import torch
from PIL import Image

from semart_mtl.data import read_split

from conftest import REAL_DIR, REPO, requires_real


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "epoch_speed", REPO / "benchmarks" / "epoch_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_batches_are_padded_to_the_maximum_length():
    bench = load_benchmark()
    items = [{"labels": torch.zeros(4, dtype=torch.long), "index": i,
              "input_ids": torch.arange(1, n + 1)} for i, n in enumerate((3, 7))]
    batch = bench.pad_to_max_length(items, pad_id=0, max_length=16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 16)
    assert batch["attention_mask"].sum(1).tolist() == [3, 7]


@requires_real
def test_benchmark_rows_keep_real_descriptions_and_labels(tmp_path):
    bench = load_benchmark()
    n_real = sum(len(read_split(REAL_DIR / f"semart_{s}.csv")) for s in ("val", "test"))
    frame = bench.real_rows(REAL_DIR, n_real + 5)
    # Repeated rows get a marker, so caching them is real work.
    assert frame["DESCRIPTION"].iloc[n_real:].str.endswith("(copy 1)").all()
    bench.write_semart_csv(frame, tmp_path / "rows.csv")
    again = read_split(tmp_path / "rows.csv")
    for column in ("DESCRIPTION", "TYPE", "SCHOOL", "TIMEFRAME", "MEDIUM"):
        assert again[column].tolist() == frame[column].tolist()


@requires_real
def test_gpu_check_small_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--small", "--json", str(out),
         "--work", str(tmp_path / "work"), "--real", str(REAL_DIR), "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    run = report["default"]
    assert report["rows"] == 16 and len(run["epoch_seconds"]) == 2
    assert run["seconds_per_epoch"] > 0 and run["bare_backbone"]["img_per_s"] > 0
    assert run["text_cache_seconds"] > 0 and run["image_cache_seconds"] > 0
    images = list((tmp_path / "work").glob("rows-16-*/Images/*.jpg"))
    assert len(images) == 16
    with Image.open(images[0]) as image:  # real size, as SemArt's JPEGs are
        assert 900 <= min(image.size) <= 1100 and 1200 <= max(image.size) <= 1400
    assert "seconds per epoch:" in done.stdout


SMALL = ["--small", "--rows", "16", "--batch-size", "8", "--image-size", "64", "--max-length",
         "64", "--device", "cpu", "--no-bare-backbone"]


@requires_real
def test_epoch_speed_ratios_come_from_epochs_that_took_turns(tmp_path):
    out = tmp_path / "speed.json"
    done = subprocess.run(
        ["python", str(REPO / "benchmarks" / "epoch_speed.py"), *SMALL, "--epochs", "3",
         "--pipelines", "naive,default", "--json", str(out), "--work", str(tmp_path / "work"),
         "--real", str(REAL_DIR)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    naive, default = report["naive"]["epoch_seconds"], report["default"]["epoch_seconds"]
    assert len(naive) == len(default) == 3
    # One line per round, both pipelines in it: the epochs took turns.
    rounds = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in rounds] == ["epoch 1", "epoch 2", "epoch 3"]
    assert all("naive" in line and "default" in line for line in rounds)
    assert report["naive"]["seconds_per_epoch"] == pytest.approx(sum(naive[1:]) / 2)
    assert report["default"]["seconds_per_epoch"] == pytest.approx(sum(default[1:]) / 2)
    assert report["speedup"] == (report["naive"]["seconds_per_epoch"]
                                 / report["default"]["seconds_per_epoch"])
    assert report["speedup_per_epoch"] == [n / d for n, d in zip(naive[1:], default[1:])]


@requires_real
def test_epoch_speed_names_the_pipeline_whose_process_failed(tmp_path):
    # Only the child checks the chunk size (as the text encoder is built), so it fails there.
    done = subprocess.run(
        ["python", str(REPO / "benchmarks" / "epoch_speed.py"), *SMALL, "--epochs", "1",
         "--pipelines", "default", "--text-chunk-rows", "-1",
         "--json", str(tmp_path / "speed.json"), "--work", str(tmp_path / "work"),
         "--real", str(REAL_DIR)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode != 0
    assert "the default pipeline's process ended" in done.stderr
    assert not (tmp_path / "speed.json").exists()


def test_epoch_speed_refuses_bad_arguments_before_any_work(tmp_path):
    base = ["python", str(REPO / "benchmarks" / "epoch_speed.py"), "--json",
            str(tmp_path / "speed.json"), "--work", str(tmp_path / "work")]
    for extra, message in (
        (["--backbone", "no_such_backbone"], "--backbone: timm has no model 'no_such_backbone'"),
        (["--real", str(tmp_path / "nowhere")], "no semart_val.csv or semart_test.csv in"),
    ):
        done = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and message in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "speed.json").exists()
