"""Predictions, metrics and confusion matrices; rebuilding a run from its folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from tqdm.auto import tqdm

from .config import TASKS
from .data import IGNORE_INDEX, TASK_COLUMNS


@torch.no_grad()
def predict(
    model, loader, accelerator, weights: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(N, T) predicted and true class indices over a loader, and mean losses.

    The losses are the weighted sum ("loss") and each task's cross-entropy; `weights` are the
    task weights of training, so validation and training loss compare.
    """
    model.eval()
    predictions, targets, losses = [], [], []
    bar = tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_local_main_process)
    for batch in bar:
        logits = model(batch)
        loss, per_task = multitask_loss(logits, batch["labels"], weights)
        values = torch.stack([loss.detach(), *[v.detach() for v in per_task.values()]])  # (1+T,)
        predicted = torch.stack([logits[t].argmax(1) for t in TASKS], dim=1)  # (B, T)
        # gather_for_metrics drops the samples repeated to even out the last batch.
        predicted, labels = accelerator.gather_for_metrics((predicted, batch["labels"]))
        predictions.append(predicted.cpu())
        targets.append(labels.cpu())
        losses.append(accelerator.gather_for_metrics(values[None]).float().mean(0).cpu())
    means = torch.stack(losses).mean(0).tolist()
    return (torch.cat(predictions).numpy(), torch.cat(targets).numpy(),
            dict(zip(["loss", *TASKS], means)))


def multitask_loss(
    logits: dict[str, torch.Tensor], labels: torch.Tensor, weights: dict[str, float] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of per-task cross-entropies; unseen labels (IGNORE_INDEX) are left out."""
    per_task = {}
    for t, task in enumerate(TASKS):
        target = labels[:, t]
        if (target != IGNORE_INDEX).any():
            per_task[task] = torch.nn.functional.cross_entropy(
                logits[task].float(), target, ignore_index=IGNORE_INDEX
            )
        else:
            # A batch without a single known label for this task contributes nothing.
            per_task[task] = logits[task].sum() * 0.0
    weights = weights or {}
    total = sum(weights.get(task, 1.0) * loss for task, loss in per_task.items())
    return total, per_task


def task_metrics(predicted: np.ndarray, target: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro and weighted F1, per-class accuracy and support for one task."""
    known = target != IGNORE_INDEX
    y_true, y_pred = target[known], predicted[known]
    out = {"n": int(known.sum()), "ignored_unseen": int((~known).sum())}
    if not len(y_true):
        return out | {"accuracy": float("nan"), "macro_f1": float("nan"),
                      "weighted_f1": float("nan"), "per_class": {}}
    matrix = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    support = matrix.sum(axis=1)
    per_class = {
        name: {"accuracy": float(matrix[i, i] / support[i]), "support": int(support[i])}
        for i, name in enumerate(classes) if support[i] > 0
    }
    return out | {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # Averaged over the classes that occur in the truth or the predictions (sklearn's
        # default), so classes absent from this split do not count as zeros.
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "per_class": per_class,
    }


def all_metrics(predicted: np.ndarray, target: np.ndarray, labels: dict[str, list[str]]) -> dict:
    """`task_metrics` for every task, plus the mean accuracy used to pick checkpoints."""
    tasks = {task: task_metrics(predicted[:, t], target[:, t], labels[task])
             for t, task in enumerate(TASKS)}
    mean = float(np.nanmean([m["accuracy"] for m in tasks.values()]))
    return {"tasks": tasks, "mean_accuracy": mean}


def confusion_frame(predicted: np.ndarray, target: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Counts: rows are true classes, columns predicted ones (unseen labels left out)."""
    known = target != IGNORE_INDEX
    matrix = confusion_matrix(target[known], predicted[known], labels=range(len(classes)))
    return pd.DataFrame(matrix, index=classes, columns=classes)


def plot_confusion(counts: pd.DataFrame, title: str, ax=None):
    """Row-normalised heatmap with class names on both axes."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    rates = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)
    if ax is None:
        side = max(4.0, 0.35 * len(counts) + 2.0)
        _, ax = plt.subplots(figsize=(side + 1.5, side))
    annotate = len(counts) <= 12
    sns.heatmap(rates, ax=ax, cmap="Blues", vmin=0, vmax=1, annot=annotate, fmt=".2f",
                square=True, cbar_kws={"label": "fraction of true class"})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return ax


def split_suffix(split: str) -> str:
    """What a split's report files carry after their stem: nothing for test (metrics.json)."""
    return "" if split == "test" else f"_{split}"


def write_report(
    run_dir: Path, split: str, predicted: np.ndarray, target: np.ndarray,
    labels: dict[str, list[str]], extra: dict,
) -> dict:
    """Write metrics JSON and per-task confusion CSV/PNG for a split; return the metrics."""
    import matplotlib.pyplot as plt

    suffix = split_suffix(split)
    metrics = all_metrics(predicted, target, labels) | {"split": split} | extra
    (run_dir / f"metrics{suffix}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    note = " (generated sample)" if extra.get("generated_data") else ""
    for t, task in enumerate(TASKS):
        counts = confusion_frame(predicted[:, t], target[:, t], labels[task])
        counts.to_csv(run_dir / f"confusion{suffix}_{task}.csv")
        ax = plot_confusion(counts, f"{task}, {split} split{note}")
        ax.figure.tight_layout()
        ax.figure.savefig(run_dir / f"confusion{suffix}_{task}.png", dpi=120)
        plt.close(ax.figure)
    return metrics


def prediction_frame(
    frame: pd.DataFrame, predicted: np.ndarray, labels: dict[str, list[str]]
) -> pd.DataFrame:
    """One row per painting: IMAGE_FILE, then the true and predicted label of every task."""
    if len(frame) != len(predicted):
        raise ValueError(f"{len(predicted)} predictions for a split of {len(frame)} paintings")
    out = {"IMAGE_FILE": frame["IMAGE_FILE"].to_numpy()}
    for t, task in enumerate(TASKS):
        # The true label comes from the CSV, so labels unseen in training stay visible.
        out[f"true_{task}"] = frame[TASK_COLUMNS[task]].to_numpy()
        out[f"pred_{task}"] = np.asarray(labels[task], dtype=object)[predicted[:, t]]
    return pd.DataFrame(out)


def format_metrics(metrics: dict) -> str:
    """One line: accuracy and macro F1 per task."""
    parts = [f"{task} acc {m['accuracy']:.3f} F1 {m['macro_f1']:.3f}"
             for task, m in metrics["tasks"].items()]
    return " | ".join(parts)


# --- a run folder ------------------------------------------------------------------------

CHECKPOINT = "best.pt"


def load_checkpoint(model, run_dir: Path, cfg=None) -> int:
    """Load best.pt into `model`; return the epoch it was saved at.

    With the run's `cfg`, a checkpoint that disagrees with it is refused, saying how.
    """
    from .checks import RunFolderError, checkpoint_problems

    state = torch.load(Path(run_dir) / CHECKPOINT, map_location="cpu", weights_only=True)
    problems = checkpoint_problems(state, model, cfg, CHECKPOINT) if cfg is not None else []
    if problems:
        raise RunFolderError(Path(run_dir), problems)
    model.load_state_dict(state["model"])
    return int(state["epoch"])


def evaluate_split(
    run_dir: Path, split: str, cfg, model, tokenizer, frame: pd.DataFrame, images_dir: Path,
    image_cfg: dict | None, accelerator, epoch: int,
) -> dict:
    """Predict one split with `model`, write its report into the run folder, print a line."""
    from .model import count_parameters
    from .pipeline import make_dataset, make_loader, open_text_cache

    model.to(accelerator.device)  # so a missing text cache entry is computed there
    dataset, unseen = make_dataset(cfg, frame, images_dir, tokenizer, image_cfg, train=False,
                                   text_cache=open_text_cache(cfg, model.text_encoder))
    pad_id = tokenizer.pad_token_id if tokenizer is not None else 0
    loader = make_loader(dataset, cfg, shuffle=False, pad_id=pad_id)
    prepared, loader = accelerator.prepare(model, loader)
    predicted, target, losses = predict(prepared, loader, accelerator, cfg.train.task_weights)
    loss = losses["loss"]
    n_params, n_trainable = count_parameters(model)
    extra = {
        "loss": loss, "checkpoint_epoch": epoch, "unseen_labels": unseen,
        "generated_data": bool(cfg.data.generated), "backbone": cfg.model.backbone,
        "modality": cfg.model.modality, "text_model": cfg.model.text_model,
        "params": n_params, "trainable_params": n_trainable,
    }
    metrics = extra
    if accelerator.is_main_process:
        metrics = write_report(Path(run_dir), split, predicted, target, cfg.labels, extra)
        prediction_frame(frame, predicted, cfg.labels).to_csv(
            Path(run_dir) / f"predictions_{split}.csv", index=False)
        note = " [generated sample, not SemArt]" if cfg.data.generated else ""
        accelerator.print(f"{split} (best epoch {epoch}): {format_metrics(metrics)} | "
                          f"mean acc {metrics['mean_accuracy']:.3f}{note}")
        unseen_rows = {task: n for task, n in unseen.items() if n}
        if unseen_rows:
            accelerator.print(f"{split}: rows with labels unseen in training, left out: "
                              f"{json.dumps(unseen_rows)}")
    return metrics


def evaluate_run(
    run_dir: str | Path, split: str = "test", data_dir: str | None = None, device: str = "auto"
) -> dict:
    """Rebuild a run's model from its folder alone and evaluate its best checkpoint."""
    from .checks import check_data, load_run_config
    from .data import load_splits, split_paths
    from .model import build_model
    from .pipeline import TEXT_DIR, image_settings, make_accelerator, needs_images, needs_text
    from .text import load_tokenizer

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, needs=(CHECKPOINT,))
    if data_dir is not None:
        cfg.data.data_dir = data_dir
        cfg.data.train_csv = cfg.data.val_csv = cfg.data.test_csv = cfg.data.images_dir = None
    cfg.train.device = device
    accelerator = make_accelerator(cfg.train)

    text_dir = str(run_dir / TEXT_DIR) if needs_text(cfg) else None
    model = build_model(cfg.model, cfg.labels, text_source=text_dir, pretrained=False,
                        image_size=cfg.data.image_size)
    epoch = load_checkpoint(model, run_dir, cfg)
    tokenizer = load_tokenizer(text_dir) if text_dir else None
    image_cfg = None
    if model.image_encoder is not None:
        image_cfg = image_settings(model.image_encoder.backbone, cfg.data.image_size)

    # NOTE: evaluation never skips paintings: its figures must cover the whole split.
    # A validation part carved from the training rows has its paintings in the train CSV.
    carved = split == "val" and split_paths(cfg.data)["val"] is None
    check_data(cfg.data, needs_images(cfg), needs_text(cfg),
               image_splits=("train",) if carved else (split,)) \
        .raise_if_problems(skip_bad_images=False, skipping_allowed=False)
    splits = load_splits(cfg.data, cfg.train.seed)
    frame = {"test": splits.test, "val": splits.val}[split]
    if frame is None:
        raise FileNotFoundError(f"the run's data has no {split} split ({cfg.data.data_dir})")
    return evaluate_split(run_dir, split, cfg, model, tokenizer, frame, splits.images_dir,
                          image_cfg, accelerator, epoch)
