"""Training end to end on tiny CPU runs: learning, run folders, reloading, processes, offline."""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REAL_DIR, requires_real, tiny_config
from semart_mtl.cli import QUICK_START, SAMPLE_DIR, build_parser, config_from_args
from semart_mtl.config import BACKBONES, SCRATCH_TEXT_MODEL, TASKS
from semart_mtl.evaluate import evaluate_run
from semart_mtl.train import train

RUN_FILES = {"config.json", "history.csv", "best.pt", "metrics.json", "text_encoder"}
RUN_FILES |= {f"confusion_{t}.{ext}" for t in TASKS for ext in ("csv", "png")}


def _majority_accuracy(sample_dir, split="val"):
    """Mean over tasks of the accuracy of always predicting the training majority class."""
    from semart_mtl.data import TASK_COLUMNS, read_split

    train_rows, rows = read_split(sample_dir / "semart_train.csv"), read_split(
        sample_dir / f"semart_{split}.csv")
    scores = [(rows[c] == train_rows[c].mode()[0]).mean() for c in TASK_COLUMNS.values()]
    return sum(scores) / len(scores)


@pytest.mark.parametrize("modality", ["text", "fusion"])
def test_tiny_model_learns_the_sample(sample_dir, tmp_path, modality):
    cfg = tiny_config(sample_dir, tmp_path / "run", modality=modality)
    cfg.train.epochs, cfg.train.lr = 8, 3e-3
    run = train(cfg)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 8 and history["train_loss"].notna().all()
    # The summed validation loss is the sum of the per-task ones (task weights all 1).
    per_task = history[[f"val_loss_{t}" for t in TASKS]].sum(axis=1)
    assert (per_task - history["val_loss"]).abs().max() < 1e-4
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    best = history["val_mean_acc"].max()
    assert best > _majority_accuracy(sample_dir) + 0.1, history.to_string()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_run_folder_reloads_to_the_same_metrics(sample_dir, tmp_path, backbone):
    run = train(tiny_config(sample_dir, tmp_path / "run", backbone=backbone))
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    written = json.loads((run / "metrics.json").read_text())
    assert written["generated_data"] is True and written["split"] == "test"

    (run / "metrics.json").unlink()
    again = evaluate_run(run, "test", device="cpu")
    assert json.loads((run / "metrics.json").read_text()) == again
    for task in TASKS:
        for key in ("accuracy", "macro_f1", "weighted_f1"):
            assert again["tasks"][task][key] == pytest.approx(written["tasks"][task][key])
        assert again["tasks"][task]["per_class"] == written["tasks"][task]["per_class"]

    config = json.loads((run / "config.json").read_text())
    assert config["labels"]["type"] == sorted(config["labels"]["type"])
    assert config["model"]["backbone"] == backbone


def test_evaluate_on_val_writes_its_own_files(sample_dir, tmp_path):
    run = train(tiny_config(sample_dir, tmp_path / "run", modality="text"))
    metrics = evaluate_run(run, "val", device="cpu")
    assert metrics["split"] == "val" and (run / "metrics_val.json").is_file()
    assert (run / "confusion_val_school.csv").is_file()
    assert json.loads((run / "metrics.json").read_text())["split"] == "test"


def test_a_run_folder_is_never_overwritten(sample_dir, tmp_path):
    cfg = tiny_config(sample_dir, tmp_path / "run", modality="text")
    train(cfg)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(tiny_config(sample_dir, tmp_path / "run", modality="text"))


def _cli(*args, timeout=300, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "semart_mtl", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("modality, options", [
    ("text", ["--text-model", "scratch"]),
    ("image", ["--image-weights", "--no-pretrained"]),
])
def test_offline_without_weights_fails_fast_naming_the_options(sample_dir, tmp_path, modality,
                                                               options):
    start = time.perf_counter()
    result = _cli("train", "--data", str(sample_dir), "--modality", modality,
                  "--out", str(tmp_path / "run"), "--device", "cpu")
    assert time.perf_counter() - start < 60
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for option in options:
        assert option in result.stderr


def test_two_processes_write_one_run_folder(sample_dir, tmp_path):
    out = tmp_path / "runs" / "two"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
        "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "semart_mtl", "train", "--data", str(sample_dir), "--out", str(out),
        "--device", "cpu", "--no-pretrained", "--text-model", SCRATCH_TEXT_MODEL,
        "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 process(es)" in result.stdout
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["two"]
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    # Every test row counted once, though the rows were split over two processes.
    assert all(metrics["tasks"][t]["n"] + metrics["tasks"][t]["ignored_unseen"] == 24
               for t in TASKS)


def test_quick_start_needs_no_download():
    cfg = config_from_args(build_parser().parse_args(["train"]))
    assert cfg.data.data_dir == str(SAMPLE_DIR)
    assert cfg.model.text_model == SCRATCH_TEXT_MODEL and not cfg.model.pretrained
    assert cfg.train.epochs == QUICK_START["epochs"]
    given = config_from_args(build_parser().parse_args(["train", "--data", "x", "--epochs", "3"]))
    assert given.model.pretrained and given.model.text_model == "distilbert-base-uncased"
    assert given.train.epochs == 3 and given.data.data_dir == "x"


@requires_real
def test_fusion_smoke_run_on_real_paintings(tmp_path):
    cfg = tiny_config(REAL_DIR, tmp_path / "run", modality="fusion")
    cfg.data.data_dir = None
    cfg.data.train_csv = str(REAL_DIR / "semart_images.csv")
    cfg.data.images_dir = str(REAL_DIR / "Images")
    cfg.data.val_fraction = 0.25
    cfg.train.batch_size = 4
    run = train(cfg)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 1 and history["train_loss"].notna().all()
    assert json.loads((run / "config.json").read_text())["data"]["generated"] is False


@pytest.mark.parametrize("options, message", [
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--batch-size", "-1"], "batch size must be at least 1"),
    (["--freeze", "2"], "freeze is a fraction in [0, 1]"),
    (["--dropout", "1.5"], "dropout must lie in [0, 1)"),
    (["--image-size", "0"], "image size must be at least 16"),
    (["--backbone", "not_a_model"], "'not_a_model' is not a timm model name"),
])
def test_bad_settings_end_in_one_message(sample_dir, tmp_path, options, message):
    result = _cli("train", "--data", str(sample_dir), "--out", str(tmp_path / "run"),
                  "--no-pretrained", "--text-model", "scratch", "--device", "cpu", *options)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_run_evaluates_from_any_folder(sample_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(sample_dir.parent)
    cfg = tiny_config(sample_dir.relative_to(sample_dir.parent), tmp_path / "run",
                      modality="text")
    run = train(cfg)
    assert json.loads((run / "config.json").read_text())["data"]["data_dir"] == str(sample_dir)
    monkeypatch.chdir(tmp_path)
    assert evaluate_run(run, "test", device="cpu")["split"] == "test"


def test_hub_probe_honours_offline_mode_proxies_and_mirrors(monkeypatch):
    from semart_mtl.text import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert not hub_reachable()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub_reachable()  # behind a proxy the hub clients decide
    monkeypatch.delenv("HTTPS_PROXY")
    for name in ("https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a mirror that is not there
    assert not hub_reachable(timeout=1.0)
