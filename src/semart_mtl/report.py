"""What the notebooks show: run folders found and compared, curves, confusions, predictions.

Every function reads run folders written by `train.train` and `evaluate.evaluate_run`
(config.json, history.csv, metrics[_val].json, confusion[_val]_<task>.csv,
predictions_<split>.csv). Functions that take `runs` take the table of `best_runs`: one row
per backbone, indexed by backbone, with a `run_dir` column.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import TASKS, RunConfig
from .data import images_dir_of, load_image
from .evaluate import CHECKPOINT, evaluate_run, plot_confusion, split_suffix

HISTORY = "history.csv"
CONFIG = "config.json"


# --- a notebook's run --------------------------------------------------------------------


def notebook_config(
    backbone: str, data_dir: str, out_root: str, epochs: int, batch_size: int,
    image_size: int | None, text_model: str, pretrained: bool, device: str,
    modality: str = "fusion", num_workers: int | None = None,
) -> RunConfig:
    """A run of one backbone from a notebook's parameters, its folder new under `out_root`."""
    from .train import run_name

    cfg = RunConfig()
    cfg.data.data_dir = str(data_dir)
    cfg.data.image_size = image_size
    cfg.data.num_workers = num_workers
    cfg.model.backbone = backbone
    cfg.model.modality = modality
    cfg.model.text_model = text_model
    cfg.model.pretrained = pretrained
    cfg.train.epochs = epochs
    cfg.train.batch_size = batch_size
    cfg.train.device = device
    cfg.train.out = str(Path(out_root) / run_name(cfg))
    cfg.validate()
    return cfg


def config_table(cfg: RunConfig) -> pd.DataFrame:
    """Every setting of a run as (section, setting) -> value; labels as class counts."""
    rows = []
    for section, values in cfg.to_dict().items():
        if section == "labels":
            rows += [("labels", f"{task} classes", len(names)) for task, names in values.items()]
            continue
        rows += [(section, key, value) for key, value in values.items()]
    table = pd.DataFrame(rows, columns=["section", "setting", "value"])
    # Values of mixed types (None, dicts, numbers) are shown as written, not coerced.
    table["value"] = table["value"].map(str)
    return table.set_index(["section", "setting"])


def load_config(run_dir: str | Path) -> RunConfig:
    """The configuration a run folder was trained with."""
    return RunConfig.load(_required(Path(run_dir) / CONFIG))


def load_history(run_dir: str | Path) -> pd.DataFrame:
    """The run's history.csv: one row per epoch."""
    return pd.read_csv(_required(Path(run_dir) / HISTORY))


def load_metrics(run_dir: str | Path, split: str = "test") -> dict:
    """The metrics JSON that evaluation wrote for a split."""
    return json.loads(_required(Path(run_dir) / f"metrics{split_suffix(split)}.json").read_text())


def epoch_table(history: pd.DataFrame) -> pd.DataFrame:
    """Seconds, images per second and peak memory per epoch (the columns the run recorded)."""
    columns = [c for c in ("seconds", "img_per_s", "peak_mem_mb") if c in history]
    return history.set_index("epoch")[columns]


# --- curves ------------------------------------------------------------------------------

# Per panel row: the history column of one task, "{stage}" filled with train/val; and the
# columns holding the same figure over all tasks.
_CURVES = {
    "loss": ("{stage}_loss_{task}", "{stage}_loss"),
    "accuracy": ("{stage}_acc_{task}", "{stage}_mean_acc"),
    "macro F1": ("{stage}_f1_{task}", "{stage}_mean_f1"),
}


def plot_history(history: pd.DataFrame, title: str = ""):
    """Loss, accuracy and macro F1 per task (and over all tasks) per epoch, train vs val."""
    import matplotlib.pyplot as plt

    columns = [*TASKS, "all tasks"]
    fig, axes = plt.subplots(len(_CURVES), len(columns), figsize=(3.2 * len(columns), 8.0),
                             sharex=True, squeeze=False)
    for row, (figure, (per_task, overall)) in enumerate(_CURVES.items()):
        for col, task in enumerate(columns):
            ax = axes[row, col]
            pattern = overall if task == "all tasks" else per_task
            drawn = 0
            for stage in ("train", "val"):
                name = pattern.format(stage=stage, task=task)
                if name in history:
                    ax.plot(history["epoch"], history[name], marker="o", label=stage)
                    drawn += 1
            if not drawn:
                ax.set_axis_off()  # the run did not record this figure
                continue
            ax.set_title(f"{task}: {figure}")
            ax.legend(fontsize=8)
            if row == len(_CURVES) - 1:
                ax.set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- confusion matrices ------------------------------------------------------------------


def load_confusion(run_dir: str | Path, task: str, split: str = "test") -> pd.DataFrame:
    """Counts written by evaluation: rows are true classes, columns predicted ones."""
    path = _required(Path(run_dir) / f"confusion{split_suffix(split)}_{task}.csv")
    return pd.read_csv(path, index_col=0)


def plot_confusions(run_dir: str | Path, split: str = "test"):
    """The four tasks' row-normalised confusion matrices of one run, two by two."""
    import matplotlib.pyplot as plt

    confusions = {task: load_confusion(run_dir, task, split) for task in TASKS}
    side = max(4.0, 0.35 * max(len(c) for c in confusions.values()) + 2.0)
    fig, axes = plt.subplots(2, 2, figsize=(2 * (side + 1.5), 2 * side))
    cfg = load_config(run_dir)
    note = " (generated sample)" if cfg.data.generated else ""
    for ax, (task, counts) in zip(axes.flat, confusions.items()):
        plot_confusion(counts, f"{cfg.model.backbone}: {task}, {split} split{note}", ax=ax)
    fig.tight_layout()
    return fig


def plot_all_confusions(runs: pd.DataFrame, split: str = "test") -> list:
    """`plot_confusions` for every run of a `best_runs` table, one figure each."""
    return [plot_confusions(run_dir, split) for run_dir in runs["run_dir"]]


# --- finding and choosing runs -----------------------------------------------------------


def find_runs(root: str | Path) -> pd.DataFrame:
    """Every finished run folder under `root` with its backbone and best validation accuracy."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of runs")
    rows = []
    for checkpoint in sorted(root.rglob(CHECKPOINT)):
        run_dir = checkpoint.parent
        if not (run_dir / CONFIG).is_file() or not (run_dir / HISTORY).is_file():
            continue  # a folder some other tool wrote, or a run stopped before its first epoch
        cfg = load_config(run_dir)
        history = load_history(run_dir)
        rows.append({
            "run_dir": str(run_dir), "backbone": cfg.model.backbone,
            "modality": cfg.model.modality, "text_model": cfg.model.text_model,
            "generated_data": cfg.data.generated, "epochs": len(history),
            "best_val_mean_acc": float(history["val_mean_acc"].max()),
        })
    columns = ["run_dir", "backbone", "modality", "text_model", "generated_data", "epochs",
               "best_val_mean_acc"]
    return pd.DataFrame(rows, columns=columns)


def best_runs(
    runs: pd.DataFrame, backbones: list[str] | None = None, modality: str | None = "fusion"
) -> pd.DataFrame:
    """Per backbone, the run with the highest best validation mean accuracy.

    Runs on the generated sample are left out whenever a run on real data exists: an easy
    synthetic run must never stand for a backbone beside real ones.
    """
    if modality is not None:
        runs = runs[runs["modality"] == modality]
    if (~runs["generated_data"].astype(bool)).any():
        runs = runs[~runs["generated_data"].astype(bool)]
    if backbones is not None:
        absent = [b for b in backbones if b not in set(runs["backbone"])]
        if absent:
            raise LookupError(f"no {modality or ''} run of {absent} among the runs found; "
                              "train them first (their notebooks)")
        runs = runs[runs["backbone"].isin(backbones)]
    if runs.empty:
        raise LookupError(f"no {modality or ''} runs to choose from")
    best = runs.loc[runs.groupby("backbone")["best_val_mean_acc"].idxmax()]
    order = backbones or sorted(best["backbone"])
    return best.set_index("backbone").loc[order]


def evaluate_runs(
    runs: pd.DataFrame, split: str = "test", data_dir: str | None = None, device: str = "auto"
) -> dict[str, dict]:
    """Evaluate every run's best checkpoint on a split (writing its report); metrics by backbone."""
    return {backbone: evaluate_run(row.run_dir, split, data_dir=data_dir, device=device)
            for backbone, row in runs.iterrows()}


# --- comparing runs ----------------------------------------------------------------------


def comparison_table(runs: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Per backbone: accuracy, macro and weighted F1 per task; size, speed and peak memory."""
    rows = {}
    for backbone, row in runs.iterrows():
        metrics = load_metrics(row.run_dir, split)
        history = load_history(row.run_dir)
        out = {}
        for task in TASKS:
            m = metrics["tasks"][task]
            out |= {(task, "accuracy"): m["accuracy"], (task, "macro F1"): m["macro_f1"],
                    (task, "weighted F1"): m["weighted_f1"]}
        peak = history["peak_mem_mb"].max() if "peak_mem_mb" in history else np.nan
        out |= {
            ("all tasks", "mean accuracy"): metrics["mean_accuracy"],
            ("cost", "params (M)"): metrics["params"] / 1e6,
            ("cost", "trainable (M)"): metrics["trainable_params"] / 1e6,
            ("cost", "s / epoch"): history["seconds"].mean(),
            ("cost", "peak memory (MB)"): peak,
            ("run", "best epoch"): metrics["checkpoint_epoch"],
            ("run", "generated data"): metrics["generated_data"],
        }
        rows[backbone] = out
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "backbone"
    return table


def per_class_accuracy(
    runs: pd.DataFrame, task: str, split: str = "test", sort: str = "accuracy"
) -> pd.DataFrame:
    """Accuracy of every class of a task per backbone, with its support; worst first."""
    columns, support = {}, {}
    for backbone, row in runs.iterrows():
        per_class = load_metrics(row.run_dir, split)["tasks"][task]["per_class"]
        columns[backbone] = {name: m["accuracy"] for name, m in per_class.items()}
        for name, m in per_class.items():
            support[name] = max(support.get(name, 0), m["support"])
    table = pd.DataFrame(columns)
    table.insert(0, "support", pd.Series(support))
    table["mean"] = table[list(columns)].mean(axis=1)
    if sort == "accuracy":
        return table.sort_values(["mean", "support"], ascending=[True, False])
    if sort == "name":
        return table.sort_index()
    raise ValueError(f"sort is 'accuracy' or 'name', got {sort!r}")


def error_absorbers(
    run_dir: str | Path, task: str, split: str = "test", top: int = 2
) -> pd.DataFrame:
    """Per true class: accuracy and the `top` classes that take most of its errors.

    A share is the fraction of the class's paintings predicted as that other class, so for
    timeframes it shows whether errors fall into the neighbouring periods.
    """
    counts = load_confusion(run_dir, task, split)
    rows = {}
    for true, row in counts.iterrows():
        support = int(row.sum())
        if not support:
            continue
        errors = row.drop(true)
        errors = errors[errors > 0].sort_values(ascending=False, kind="stable").head(top)
        out = {"support": support, "accuracy": row[true] / support}
        for k in range(top):
            name = errors.index[k] if k < len(errors) else None
            out[f"absorber_{k + 1}"] = name
            out[f"share_{k + 1}"] = errors.iloc[k] / support if name is not None else np.nan
        rows[true] = out
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = f"true {task}"
    return table.sort_values("accuracy", kind="stable")


def all_error_absorbers(
    runs: pd.DataFrame, task: str, split: str = "test", top: int = 2
) -> pd.DataFrame:
    """`error_absorbers` of every run of a `best_runs` table, indexed by (backbone, class)."""
    tables = {backbone: error_absorbers(row.run_dir, task, split, top)
              for backbone, row in runs.iterrows()}
    return pd.concat(tables, names=["backbone"])


# --- paintings ---------------------------------------------------------------------------


def load_predictions(run_dir: str | Path, split: str = "test") -> pd.DataFrame:
    """predictions_<split>.csv: IMAGE_FILE and the true and predicted label of every task."""
    path = _required(Path(run_dir) / f"predictions_{split}.csv")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def run_images_dir(run_dir: str | Path, data_dir: str | None = None) -> Path:
    """Where a run's paintings are: its own data folder, or `data_dir` if it moved."""
    cfg = load_config(run_dir)
    if data_dir is not None:
        cfg.data.data_dir, cfg.data.images_dir = str(data_dir), None
    return images_dir_of(cfg.data)


def plot_predictions(
    run_dir: str | Path, split: str = "test", n: int = 12, columns: int = 4,
    data_dir: str | None = None, seed: int = 0,
):
    """A grid of `n` paintings drawn at random, each with its predicted (and true) labels.

    A task's line is green when the prediction is right; when wrong it is red and names the
    true label. The same seed draws the same paintings for every run of the same split.
    """
    import matplotlib.pyplot as plt

    predictions = load_predictions(run_dir, split)
    if predictions.empty:
        raise ValueError(f"{run_dir}: predictions_{split}.csv has no rows")
    shown = predictions.sample(n=min(n, len(predictions)), random_state=seed)
    images = run_images_dir(run_dir, data_dir)
    rows = int(np.ceil(len(shown) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (_, painting) in zip(axes.flat, shown.iterrows()):
        ax.imshow(load_image(images / painting["IMAGE_FILE"]))
        ax.set_title(painting["IMAGE_FILE"], fontsize=8)
        for line, task in enumerate(TASKS):
            true, predicted = painting[f"true_{task}"], painting[f"pred_{task}"]
            right = true == predicted
            text = f"{task}: {predicted}" + ("" if right else f" (true {true})")
            ax.text(0.0, -0.04 - 0.085 * line, text, transform=ax.transAxes, va="top",
                    fontsize=8, color="tab:green" if right else "tab:red")
    cfg = load_config(run_dir)
    note = " (generated sample, not SemArt)" if cfg.data.generated else ""
    fig.suptitle(f"{cfg.model.backbone}: {split} paintings, predicted labels{note}")
    fig.tight_layout()
    return fig


def plot_all_predictions(
    runs: pd.DataFrame, split: str = "test", n: int = 12, data_dir: str | None = None,
    seed: int = 0,
) -> list:
    """`plot_predictions` for every run of a `best_runs` table, the same paintings in each."""
    return [plot_predictions(run_dir, split, n=n, data_dir=data_dir, seed=seed)
            for run_dir in runs["run_dir"]]


# --- helpers -----------------------------------------------------------------------------


def _required(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {path.parent} a finished run folder?")
    return path
