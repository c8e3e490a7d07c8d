"""Training: one Accelerate loop for CPU, one GPU and several GPUs; writes the run folder."""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from datetime import datetime
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import checkpoint
from .checks import (
    SKIPPED_IMAGES, RunFolderError, check_data, checkpoint_problems, drop_bad_images,
    write_skipped,
)
from .config import TASKS, RunConfig, TrainConfig
from .data import fit_labels, is_generated, load_splits
from .evaluate import (
    CHECKPOINT, all_metrics, evaluate_split, format_metrics, load_checkpoint, multitask_loss,
    predict,
)
from .memory import peak_memory_mb
from .model import build_model, count_parameters
from .pipeline import (
    TEXT_DIR, image_settings, make_accelerator, make_dataset, make_loader,
    needs_images, needs_text, open_text_cache, set_up_cpu_training, settle_hub_access,
    speed_up_model, text_source,
)
from .text import load_tokenizer


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names where."""


def train_one_epoch(model, loader, optimizer, scheduler, accelerator, weights, epoch) -> dict:
    """One pass over the training loader; returns mean losses and throughput.

    Raises NonFiniteLoss, naming epoch, step, batch, task and paintings, at the first
    NaN or infinite loss, before anything is saved from it.
    """
    model.train()
    totals = {task: 0.0 for task in TASKS} | {"loss": 0.0}
    n_batches, n_images, start = 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False,
               disable=not accelerator.is_local_main_process)
    for i, batch in enumerate(bar):
        logits = model(batch)  # prepare() wrapped forward in autocast when mixed precision
        loss, per_task = multitask_loss(logits, batch["labels"], weights)

        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()

        # One transfer for all five numbers: (1 + T,)
        values = torch.stack([loss.detach(), *[v.detach() for v in per_task.values()]]).tolist()
        if not all(math.isfinite(v) for v in values):
            raise NonFiniteLoss(_non_finite_message(values, per_task, batch, loader, epoch, i))
        totals["loss"] += values[0]
        for task, value in zip(per_task, values[1:]):
            totals[task] += value
        n_batches += 1
        n_images += len(batch["labels"]) * accelerator.num_processes
        bar.set_postfix(loss=f"{values[0]:.3f}")
    seconds = time.perf_counter() - start
    # Each process saw its own shard; report the mean over all of them.
    local = torch.tensor([totals[k] / max(n_batches, 1) for k in totals], device=accelerator.device)
    means = dict(zip(totals, accelerator.reduce(local, reduction="mean").tolist()))
    return means | {"seconds": seconds, "img_per_s": n_images / seconds}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters, each step one fused kernel."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Fused: the same update up to rounding, and on 2 CPU cores a step over the 11M trainable
    # parameters of EfficientNet-B0 and DistilBERT's last layer took 9 ms instead of 30 ms.
    return torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _non_finite_message(values, per_task, batch, loader, epoch: int, i: int) -> str:
    tasks = [task for task, v in zip(per_task, values[1:]) if not math.isfinite(v)]
    rows = batch["index"].tolist()
    paintings = [loader.dataset.image_files[r] for r in rows[:8]]
    return (f"loss is {values[0]} at epoch {epoch}, step {(epoch - 1) * len(loader) + i + 1} "
            f"(batch {i + 1} of {len(loader)}), task(s) {tasks or ['weighted sum']}; "
            f"training rows {rows[:8]}{' ...' if len(rows) > 8 else ''}, paintings {paintings}")


def train(cfg: RunConfig, resume: bool = False) -> Path:
    """Train, keep the best checkpoint by mean validation accuracy, evaluate it on test.

    `resume`: continue the run in `cfg.train.out` after the last epoch its last.pt holds.
    """
    cfg.validate()
    cfg.absolute_paths()
    accelerator = make_accelerator(cfg.train)
    set_seed(cfg.train.seed)
    log = accelerator.print

    # --- data ---
    run_dir = _run_dir(cfg, accelerator, resume)
    # Reading every painting once is enough: the main process checks, the others are told.
    report = [check_data(cfg.data, needs_images(cfg), needs_text(cfg))
              if accelerator.is_main_process else None]
    report = (broadcast_object_list(report) if accelerator.num_processes > 1 else report)[0]
    report.raise_if_problems(cfg.data.skip_bad_images)
    # Made only now, so data that stops the run leaves no empty run folder behind.
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    splits = load_splits(cfg.data, cfg.train.seed)
    if report.bad_images:
        splits.train, splits.val = (drop_bad_images(f, report.bad_images)
                                    for f in (splits.train, splits.val))
        if splits.test is not None:
            splits.test = drop_bad_images(splits.test, report.bad_images)
        if accelerator.is_main_process:
            write_skipped(report.bad_images, run_dir / SKIPPED_IMAGES)
        warnings.warn(f"--skip-bad-images: {len(report.bad_images)} unreadable painting(s) left "
                      f"out of every split, listed in {run_dir / SKIPPED_IMAGES}", stacklevel=2)
    cfg.data.generated = is_generated(cfg.data)
    labels = fit_labels(splits.train)
    if resume and labels != cfg.labels:
        raise RunFolderError(run_dir, ["the training rows' classes differ from config.json's: "
                                       "the data changed since the run began"])
    cfg.labels = labels
    if cfg.data.generated:
        warnings.warn("training on the generated sample: its figures say nothing about SemArt",
                      stacklevel=2)

    # --- model ---
    settle_hub_access(cfg)
    source = None
    if needs_text(cfg):
        # A resumed run keeps the text model it began with.
        source = text_source(cfg, run_dir, splits.train["DESCRIPTION"].tolist(),
                             accelerator.is_main_process and not resume)
        accelerator.wait_for_everyone()
    model = build_model(cfg.model, cfg.labels, text_source=source,
                        image_size=cfg.data.image_size)
    tokenizer = load_tokenizer(source) if source else None
    image_cfg = image_settings(model.image_encoder.backbone, cfg.data.image_size) \
        if model.image_encoder is not None else None
    if accelerator.is_main_process and not resume:
        _save_text_model(model, tokenizer, run_dir, source)
        cfg.save(run_dir / "config.json")
    # No process reads the run folder's text model while the main process writes it.
    accelerator.wait_for_everyone()

    # --- loaders ---
    speed_up_model(model, cfg.train)
    model.to(accelerator.device)  # so the text cache is filled on the training device
    if accelerator.device.type == "cpu":
        set_up_cpu_training(accelerator.num_processes)
    text_cache = open_text_cache(cfg, model.text_encoder)
    pad_id = tokenizer.pad_token_id if tokenizer is not None else 0
    train_set, _ = make_dataset(cfg, splits.train, splits.images_dir, tokenizer, image_cfg, True,
                                text_cache)
    val_set, val_unseen = make_dataset(cfg, splits.val, splits.images_dir, tokenizer, image_cfg,
                                       False, text_cache)
    train_loader = make_loader(train_set, cfg, shuffle=True, pad_id=pad_id)
    val_loader = make_loader(val_set, cfg, shuffle=False, pad_id=pad_id)
    generators = [train_loader.generator, val_loader.generator]

    # --- optimisation ---
    optimizer = make_optimizer(model, cfg.train)
    steps = cfg.train.epochs * len(train_loader)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(cfg.train.warmup_fraction * steps), steps
    )
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )

    n_params, n_trainable = count_parameters(model)
    log(f"run {run_dir}")
    source_name = "GENERATED SAMPLE (not SemArt)" if cfg.data.generated \
        else splits.images_dir.parent
    log(f"data {source_name}"
        f" | train {len(train_set)} | val {len(val_set)}"
        f"{' (carved from train)' if splits.val_carved else ''}"
        f" | test {len(splits.test) if splits.test is not None else 'none'}")
    log(f"model {cfg.model.backbone if image_cfg else '-'} + "
        f"{cfg.model.text_model if source else '-'} ({cfg.model.modality}) | "
        f"{n_params / 1e6:.1f}M params, {n_trainable / 1e6:.2f}M trainable")
    log(f"epochs {cfg.train.epochs} | batch {cfg.train.batch_size} x {accelerator.num_processes} "
        f"process(es) | device {accelerator.device} | precision {accelerator.mixed_precision}")
    _log_unseen(log, "val", val_unseen)
    for note in report.notes:
        log(f"data: {note}")

    # --- epochs ---
    history, best, done = [], -1.0, 0
    if resume:
        history, best, done = _load_last(run_dir, cfg, accelerator, model, optimizer, scheduler,
                                         generators)
        log(f"resuming after epoch {done} of {cfg.train.epochs}")
    for epoch in range(done + 1, cfg.train.epochs + 1):
        try:
            stats = train_one_epoch(model, train_loader, optimizer, scheduler, accelerator,
                                    cfg.train.task_weights, epoch)
        except NonFiniteLoss as err:
            last = f"{run_dir / checkpoint.LAST} (epoch {done}), untouched" if done \
                else "none yet (it fails in the first epoch)"
            raise NonFiniteLoss(f"{err}. Run stopped; last good checkpoint: {last}.") from None
        predicted, target, val_losses = predict(model, val_loader, accelerator,
                                                cfg.train.task_weights)
        val_loss = val_losses["loss"]
        metrics = all_metrics(predicted, target, cfg.labels)
        stats["peak_mem_mb"] = peak_memory_mb(accelerator.device)  # after training and validation
        improved = metrics["mean_accuracy"] > best
        if improved:
            best = metrics["mean_accuracy"]
            _save_checkpoint(accelerator, model, run_dir, epoch, metrics, cfg)
        history.append(_history_row(epoch, stats, val_losses, metrics,
                                    scheduler.get_last_lr()[0]))
        if accelerator.is_main_process:
            _write_history(history, run_dir / "history.csv")
        _save_last(accelerator, run_dir, cfg, model, optimizer, scheduler, epoch, best, history,
                   generators)
        done = epoch
        log(f"epoch {epoch}/{cfg.train.epochs} loss {stats['loss']:.3f} val_loss {val_loss:.3f} | "
            f"{format_metrics(metrics)} | mean acc {metrics['mean_accuracy']:.3f} | "
            f"{stats['seconds']:.1f} s {stats['img_per_s']:.1f} img/s{' *' if improved else ''}")

    # --- test ---
    accelerator.wait_for_everyone()
    if splits.test is not None:
        best_model = accelerator.unwrap_model(model)
        epoch = load_checkpoint(best_model, run_dir)
        evaluate_split(run_dir, "test", cfg, best_model, tokenizer, splits.test,
                       splits.images_dir, image_cfg, accelerator, epoch)
    accelerator.end_training()
    return run_dir


def _run_dir(cfg: RunConfig, accelerator, resume: bool = False) -> Path:
    """The run folder's path, named on the main process so every process writes to the same one.

    Nothing is created here: a run that already lives there is refused before any work.
    """
    name = [cfg.train.out]
    if name[0] is None:
        name[0] = f"checkpoints/{run_name(cfg)}"
    name = broadcast_object_list(name) if accelerator.num_processes > 1 else name
    cfg.train.out = name[0]
    run_dir = Path(name[0])
    if resume:
        if not (run_dir / checkpoint.LAST).is_file():
            raise RunFolderError(run_dir, [f"{checkpoint.LAST} is missing: the run ended before "
                                           "its first epoch did, so there is nothing to resume"])
    elif accelerator.is_main_process:
        if (run_dir / CHECKPOINT).exists() or (run_dir / checkpoint.LAST).exists():
            raise FileExistsError(f"{run_dir} already holds a run; choose another --out, or "
                                  f"continue it with --resume {run_dir}")
    accelerator.wait_for_everyone()
    return run_dir


def _save_text_model(model, tokenizer, run_dir: Path, source: str | None) -> None:
    """Keep the text model's config and tokenizer, so the run rebuilds without a download."""
    folder = run_dir / TEXT_DIR
    if model.text_encoder is None or Path(source) == folder:
        return  # no text model, or it was built in the run folder ("scratch")
    model.text_encoder.backbone.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _save_checkpoint(
    accelerator, model, run_dir: Path, epoch: int, metrics: dict, cfg: RunConfig
) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"model": accelerator.unwrap_model(model).state_dict(), "epoch": epoch,
                 "val_mean_accuracy": metrics["mean_accuracy"], "meta": checkpoint.run_meta(cfg)}
        checkpoint.atomic_save(state, run_dir / CHECKPOINT)


def _save_last(accelerator, run_dir: Path, cfg: RunConfig, model, optimizer, scheduler,
               epoch: int, best: float, history: list[dict], generators) -> None:
    """Everything needed to continue after `epoch`, replacing the previous last.pt whole."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # NOTE: the RNG states are the main process's; with several processes a resumed run
        # continues correctly but not bit for bit like an uninterrupted one.
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        state = {
            "model": accelerator.unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler, "epoch": epoch, "step": scheduler.scheduler.last_epoch,
            "best": best, "history": history, "rng": checkpoint.rng_states(generators),
            "meta": checkpoint.run_meta(cfg),
        }
        checkpoint.atomic_save(state, run_dir / checkpoint.LAST)


def _load_last(run_dir: Path, cfg: RunConfig, accelerator, model, optimizer, scheduler,
               generators) -> tuple[list[dict], float, int]:
    """Restore last.pt into the prepared objects; return history, best score and epoch."""
    state = checkpoint.load(run_dir / checkpoint.LAST)
    unwrapped = accelerator.unwrap_model(model)
    problems = checkpoint_problems(state, unwrapped, cfg, checkpoint.LAST)
    if problems:
        raise RunFolderError(run_dir, problems)
    unwrapped.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if accelerator.scaler is not None and state["scaler"] is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    checkpoint.restore_rng_states(state["rng"], generators)
    return state["history"], float(state["best"]), int(state["epoch"])


def _history_row(epoch: int, stats: dict, val_losses: dict, metrics: dict, lr: float) -> dict:
    row = {"epoch": epoch, "train_loss": stats["loss"]}
    row |= {f"train_loss_{task}": stats[task] for task in TASKS}
    row["val_loss"] = val_losses["loss"]
    row |= {f"val_loss_{task}": val_losses[task] for task in TASKS}
    for task, m in metrics["tasks"].items():
        row[f"val_acc_{task}"] = m["accuracy"]
        row[f"val_f1_{task}"] = m["macro_f1"]
    row |= {"val_mean_acc": metrics["mean_accuracy"], "seconds": stats["seconds"],
            "img_per_s": stats["img_per_s"], "lr": lr, "peak_mem_mb": stats["peak_mem_mb"]}
    return row


def run_name(cfg: RunConfig) -> str:
    """A new run's folder name: <backbone>-<modality>-<time>."""
    return f"{cfg.model.backbone}-{cfg.model.modality}-{datetime.now():%Y%m%d-%H%M%S}"


def _write_history(history: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _log_unseen(log, split: str, unseen: dict[str, int]) -> None:
    counted = {task: n for task, n in unseen.items() if n}
    if counted:
        log(f"{split}: rows whose label training never saw, left out of loss and metrics: "
            f"{json.dumps(counted)}")
