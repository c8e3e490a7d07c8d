"""A killed run, resumed, ends exactly where an uninterrupted one does; one seed, one result."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from semart_mtl import checkpoint
from semart_mtl.cli import main
from semart_mtl.sample import make_sample

TIMING = ("seconds", "img_per_s", "peak_mem_mb")  # measurements, not results


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_sample(tmp_path_factory.mktemp("data"), seed=2,
                       sizes={"train": 32, "val": 8, "test": 8})


def train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--no-pretrained",
            "--text-model", "scratch", "--image-size", "32", "--max-length", "48",
            "--fusion-dim", "64", "--num-workers", "0", "--epochs", "2", "--batch-size", "8",
            "--device", "cpu", "--seed", "3"]


def results(run: Path) -> tuple[dict, list[dict]]:
    """Test metrics and the per-epoch history without its timings."""
    with open(run / "history.csv") as f:
        history = [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]
    return json.loads((run / "metrics.json").read_text()), history


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    assert main(train_args(data, out)) == 0
    return out


def test_same_seed_same_metrics(data, uninterrupted, tmp_path):
    assert main(train_args(data, tmp_path / "again")) == 0
    assert results(tmp_path / "again") == results(uninterrupted)


def test_killed_run_resumes_to_the_same_metrics(data, uninterrupted, tmp_path, capsys):
    run = tmp_path / "killed"
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1",
                        "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "semart_mtl", *train_args(data, run)],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    # last.pt appears (whole, by rename) once epoch 1 is done: kill during epoch 2.
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if (run / checkpoint.LAST).exists():
            process.kill()
            break
        time.sleep(0.01)
    process.wait()
    log.close()
    assert process.returncode == -9, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (run / "metrics.json").exists()
    assert checkpoint.load(run / checkpoint.LAST)["epoch"] == 1

    # Starting afresh over it is refused; so is resuming with other settings.
    assert main(train_args(data, run)) == 2
    assert main(["train", "--resume", str(run), "--epochs", "5"]) == 2
    assert "drop --epochs" in capsys.readouterr().err

    assert main(["train", "--resume", str(run)]) == 0
    assert results(run) == results(uninterrupted)
