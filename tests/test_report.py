"""Helpers the notebooks call: run folders found, chosen, compared and drawn."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_config  # noqa: E402

from semart_mtl import report  # noqa: E402
from semart_mtl.config import TASKS, RunConfig  # noqa: E402
from semart_mtl.data import load_splits  # noqa: E402
from semart_mtl.evaluate import CHECKPOINT, write_report  # noqa: E402
from semart_mtl.memory import peak_memory_mb  # noqa: E402
from semart_mtl.train import train  # noqa: E402

LABELS = {
    "type": ["landscape", "portrait"],
    "school": ["Dutch", "Italian"],
    "timeframe": ["1451-1500", "1501-1550", "1551-1600"],
    "medium": ["canvas", "wood"],
}
# Eight test paintings: true and predicted class index per task (columns in TASKS order).
TARGET = np.array([[0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1],
                   [1, 0, 1, 1], [1, 0, 1, 1], [1, 1, 2, 1], [1, 1, 2, 0]])
# type all right; school right on 6 of 8; timeframe: 1501-1550 keeps 1 of 5, loses 3 to
# 1451-1500 and 1 to 1551-1600.
PREDICTED = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1],
                      [1, 1, 0, 1], [1, 0, 2, 1], [1, 0, 2, 1], [1, 1, 2, 0]])


def fake_run(root, name: str, backbone: str, val_acc: list[float], seconds: float = 2.0,
             modality: str = "fusion", peak: bool = True, generated: bool = False):
    """A run folder as train writes it, with chosen history and test predictions."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = RunConfig(labels=LABELS)
    cfg.model.backbone, cfg.model.modality = backbone, modality
    cfg.data.generated = generated
    cfg.save(run_dir / "config.json")
    history = pd.DataFrame({
        "epoch": range(1, len(val_acc) + 1), "train_loss": 2.0, "val_loss": 2.5,
        **{f"train_loss_{t}": 0.5 for t in TASKS},
        **{f"val_acc_{t}": val_acc for t in TASKS}, **{f"val_f1_{t}": 0.3 for t in TASKS},
        "val_mean_acc": val_acc, "seconds": seconds, "img_per_s": 10.0,
    })
    if peak:
        history["peak_mem_mb"] = [100.0 * (i + 1) for i in range(len(val_acc))]
    history.to_csv(run_dir / "history.csv", index=False)
    (run_dir / CHECKPOINT).write_bytes(b"")
    write_report(run_dir, "test", PREDICTED, TARGET, LABELS,
                 {"params": 3_000_000, "trainable_params": 1_000_000, "checkpoint_epoch": 2,
                  "generated_data": True})
    plt.close("all")
    return run_dir


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("runs")
    fake_run(tmp_path, "a/resnet18-old", "resnet18", [0.2, 0.4])
    fake_run(tmp_path, "a/resnet18-new", "resnet18", [0.5, 0.3], seconds=4.0)
    fake_run(tmp_path, "efficientnet_b0-1", "efficientnet_b0", [0.6], peak=False)
    fake_run(tmp_path, "resnet18-image", "resnet18", [0.9], modality="image")
    (tmp_path / "stopped").mkdir()  # a run stopped before its first checkpoint
    (tmp_path / "stopped" / "config.json").write_text("{}")
    return tmp_path


def test_find_runs_and_best_per_backbone(runs_root):
    runs = report.find_runs(runs_root)
    assert len(runs) == 4  # the stopped folder is not a run
    best = report.best_runs(runs)
    assert list(best.index) == ["efficientnet_b0", "resnet18"]
    # resnet18: 0.5 at epoch 1 beats 0.4; the image-only run is another modality.
    assert best.loc["resnet18", "run_dir"].endswith("resnet18-new")
    assert best.loc["resnet18", "best_val_mean_acc"] == pytest.approx(0.5)
    assert list(report.best_runs(runs, backbones=["resnet18"]).index) == ["resnet18"]
    assert report.best_runs(runs, modality="image").loc["resnet18", "run_dir"].endswith("image")
    with pytest.raises(LookupError, match="vit_tiny"):
        report.best_runs(runs, backbones=["resnet18", "vit_tiny_patch16_224"])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        report.find_runs(runs_root / "absent")


def test_a_generated_run_never_stands_beside_real_ones(tmp_path):
    fake_run(tmp_path, "real", "resnet18", [0.4])
    fake_run(tmp_path, "sample", "resnet18", [0.99], generated=True)
    fake_run(tmp_path, "sample-vit", "vit_tiny_patch16_224", [0.99], generated=True)
    best = report.best_runs(report.find_runs(tmp_path))
    assert list(best.index) == ["resnet18"] and best.loc["resnet18", "run_dir"].endswith("real")
    # Runs on the sample alone are still compared (the notebooks' CI run).
    only_sample = report.find_runs(tmp_path)
    only_sample = only_sample[only_sample["generated_data"]]
    assert list(report.best_runs(only_sample).index) == ["resnet18", "vit_tiny_patch16_224"]


def test_comparison_table(runs_root):
    best = report.best_runs(report.find_runs(runs_root))
    table = report.comparison_table(best)
    row = table.loc["resnet18"]
    assert row[("type", "accuracy")] == pytest.approx(1.0)
    assert row[("school", "accuracy")] == pytest.approx(6 / 8)
    assert row[("timeframe", "accuracy")] == pytest.approx(4 / 8)
    assert 0 < row[("timeframe", "macro F1")] < row[("type", "macro F1")] == pytest.approx(1.0)
    assert row[("cost", "params (M)")] == pytest.approx(3.0)
    assert row[("cost", "trainable (M)")] == pytest.approx(1.0)
    assert row[("cost", "s / epoch")] == pytest.approx(4.0)
    assert row[("cost", "peak memory (MB)")] == pytest.approx(200.0)
    # A run from before peak memory was recorded shows it as missing, not as zero.
    assert np.isnan(table.loc["efficientnet_b0", ("cost", "peak memory (MB)")])


def test_per_class_accuracy_and_error_absorbers(runs_root):
    best = report.best_runs(report.find_runs(runs_root))
    per_class = report.per_class_accuracy(best, "timeframe")
    assert list(per_class.index) == ["1501-1550", "1551-1600", "1451-1500"]  # worst first
    assert per_class.loc["1501-1550", "support"] == 5
    assert per_class.loc["1501-1550", "resnet18"] == pytest.approx(1 / 5)
    assert list(report.per_class_accuracy(best, "timeframe", sort="name").index) == sorted(
        LABELS["timeframe"])

    absorbers = report.error_absorbers(best.loc["resnet18", "run_dir"], "timeframe")
    middle = absorbers.loc["1501-1550"]
    assert middle["accuracy"] == pytest.approx(1 / 5)
    assert (middle["absorber_1"], middle["share_1"]) == ("1451-1500", pytest.approx(3 / 5))
    assert (middle["absorber_2"], middle["share_2"]) == ("1551-1600", pytest.approx(1 / 5))
    assert pd.isna(absorbers.loc["1451-1500", "absorber_1"])  # no errors to absorb
    both = report.all_error_absorbers(best, "timeframe", top=1)
    assert both.index.names == ["backbone", "true timeframe"]
    assert both.loc[("efficientnet_b0", "1501-1550"), "absorber_1"] == "1451-1500"


def test_plot_history_draws_train_and_val(runs_root):
    history = report.load_history(runs_root / "a" / "resnet18-new")
    fig = report.plot_history(history)
    axes = np.array(fig.axes).reshape(3, len(TASKS) + 1)
    loss_type, acc_type, all_loss = axes[0, 0], axes[1, 0], axes[0, -1]
    assert [line.get_label() for line in loss_type.lines] == ["train"]
    assert list(acc_type.lines[0].get_ydata()) == [0.5, 0.3]
    assert [line.get_label() for line in all_loss.lines] == ["train", "val"]
    assert not axes[2, -1].axison  # no mean F1 recorded: the panel is left empty
    plt.close(fig)


def test_notebook_config_and_table(tmp_path):
    cfg = report.notebook_config("resnet18", "data/x", str(tmp_path), 2, 8, 64, "scratch",
                                 False, "cpu")
    assert cfg.train.out.startswith(str(tmp_path / "resnet18-fusion-"))
    table = report.config_table(cfg)
    assert table.loc[("train", "epochs"), "value"] == "2"
    assert table.loc[("model", "pretrained"), "value"] == "False"
    with pytest.raises(ValueError, match="modality"):
        report.notebook_config("resnet18", "d", "o", 1, 8, 64, "scratch", False, "cpu",
                               modality="sound")


def test_peak_memory_on_cpu_is_the_resident_set():
    before = peak_memory_mb("cpu")
    block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
    assert peak_memory_mb("cpu") >= before
    assert peak_memory_mb("cpu") >= block.numel() * 4 / 2**20
    del block


def test_trained_run_writes_predictions_and_peak_memory(sample_dir, tmp_path):
    run_dir = train(tiny_config(sample_dir, tmp_path / "run"))
    history = report.load_history(run_dir)
    assert (history["peak_mem_mb"] > 0).all()

    predictions = report.load_predictions(run_dir, "test")
    test = load_splits(RunConfig.load(run_dir / "config.json").data, seed=42).test
    assert list(predictions["IMAGE_FILE"]) == list(test["IMAGE_FILE"])
    assert list(predictions["true_type"]) == list(test["TYPE"])
    # The predicted labels agree with the confusion matrix evaluation wrote.
    confusion = report.load_confusion(run_dir, "school")
    counted = predictions["pred_school"].value_counts()
    for name in confusion.columns:
        assert confusion[name].sum() == counted.get(name, 0)

    fig = report.plot_predictions(run_dir, n=6, columns=3)
    assert sum(ax.has_data() for ax in fig.axes) == 6
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum(text.startswith("type: ") for text in texts) == 6
    plt.close("all")
