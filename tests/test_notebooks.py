"""The four notebooks run top to bottom on a generated sample, and are committed without outputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest

from semart_mtl.sample import make_sample

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
# Three backbone notebooks first: the evaluation notebook reads the runs they write.
TRAINING = {"resnet18": 64, "efficientnet_b0": 64, "vit_tiny": None}  # name -> image size
EVALUATION = "test_evaluation"
# Two steps per epoch, two epochs: enough for curves, little CPU on shared machines.
TINY_SAMPLE = {"train": 24, "val": 8, "test": 8}


def committed_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_four_notebooks_are_there():
    names = {path.stem for path in committed_notebooks()}
    assert names == {*TRAINING, EVALUATION}


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: p.name)
def test_committed_without_outputs_and_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    stray = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not stray, f"{path.name}: code cells {stray} hold outputs; strip them before committing"
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    assert nb.cells[0].cell_type == "markdown", f"{path.name}: must open with its description"


def test_notebooks_run_end_to_end_on_the_sample(tmp_path, monkeypatch):
    import papermill

    data = make_sample(tmp_path / "sample", seed=0, sizes=TINY_SAMPLE)
    runs = tmp_path / "runs"
    # The kernel is another process: it must import this checkout's package.
    src = str(REPO / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get(
        "PYTHONPATH")])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = {"data_dir": str(data), "out_root": str(runs), "epochs": 2, "batch_size": 12,
            "text_model": "scratch", "pretrained": False, "device": "cpu", "num_workers": 0}

    seconds = {}
    for name, image_size in TRAINING.items():
        seconds[name] = _execute(papermill, name, tmp_path, tiny | {"image_size": image_size})
    seconds[EVALUATION] = _execute(papermill, EVALUATION, tmp_path,
                                   {"runs_root": str(runs), "device": "cpu", "n_paintings": 4})
    print("notebook seconds:", {k: round(v, 1) for k, v in seconds.items()})

    # Each backbone notebook saved one run, which the evaluation notebook then evaluated.
    finished = sorted(p.parent.name for p in runs.glob("*/best.pt"))
    assert [name.split("-fusion-")[0] for name in finished] == [
        "efficientnet_b0", "resnet18", "vit_tiny_patch16_224"]
    for run_dir in runs.iterdir():
        assert (run_dir / "metrics_val.json").is_file()
        assert (run_dir / "predictions_test.csv").is_file()
    executed = nbformat.read(tmp_path / f"{EVALUATION}.ipynb", as_version=4)
    images = [out for cell in executed.cells if cell.cell_type == "code"
              for out in cell.outputs if "image/png" in out.get("data", {})]
    # 3 confusion figures and 3 prediction grids.
    assert len(images) == 6


def _execute(papermill, name: str, tmp_path: Path, parameters: dict) -> float:
    start = time.perf_counter()
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
        parameters=parameters, cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
    )
    return time.perf_counter() - start
