"""Command line: `python -m semart_mtl make-sample | train | evaluate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import (
    BACKBONES, IMAGE_CHECKS, MODALITIES, SCRATCH_TEXT_MODEL, TASKS, ConfigError, RunConfig,
)

SAMPLE_DIR = Path("data/sample")
# The quick start (train without --data) must run offline in minutes on a CPU.
QUICK_START = {"pretrained": False, "text_model": SCRATCH_TEXT_MODEL, "epochs": 8,
               "image_size": 128, "max_length": 64}


def parse_task_weights(text: str) -> dict[str, float]:
    """'type=1,school=0.5' -> {'type': 1.0, 'school': 0.5}."""
    weights = {}
    for item in text.split(","):
        task, _, value = item.partition("=")
        if task.strip() not in TASKS or not value:
            raise argparse.ArgumentTypeError(f"expected TASK=WEIGHT with TASK in {TASKS}: {item!r}")
        weights[task.strip()] = float(value)
    return weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semart-mtl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("make-sample", help="write the generated sample dataset")
    sample.add_argument("dir", type=Path)
    sample.add_argument("--seed", type=int, default=0)

    train = commands.add_parser("train", help="train, then evaluate the best checkpoint on test")
    data = train.add_argument_group("data")
    data.add_argument("--data", help="SemArt folder; without it the generated sample is used")
    data.add_argument("--train-csv")
    data.add_argument("--val-csv")
    data.add_argument("--test-csv")
    data.add_argument("--images", help="images folder (default DATA/Images)")
    data.add_argument("--val-fraction", type=float, help="carved from train without a val CSV")
    data.add_argument("--image-size", type=int, help="default: the backbone's own")
    data.add_argument("--max-length", type=int, help="description tokens")
    data.add_argument("--num-workers", type=int,
                      help="loader processes (default: from the cores and the device)")
    data.add_argument("--image-check", choices=IMAGE_CHECKS,
                      help="how paintings are checked before training (default decode)")
    data.add_argument("--skip-bad-images", action="store_true", default=None,
                      help="leave unreadable paintings out (listed in the run folder) "
                           "instead of stopping")
    data.add_argument("--cache-dir", help="text and image caches (default .cache/semart_mtl)")
    data.add_argument("--no-text-cache", dest="text_cache", action="store_false", default=None,
                      help="run the whole text encoder every step")
    data.add_argument("--no-image-cache", dest="image_cache", action="store_false", default=None,
                      help="decode the full-size images every epoch")
    data.add_argument("--image-cache-size", type=int, help="shorter side of the cached copies")
    data.add_argument("--group-by-length", action="store_true", default=None,
                      help="batch descriptions of similar length together")
    model = train.add_argument_group("model")
    model.add_argument("--backbone", help=f"any timm name; benchmarked: {', '.join(BACKBONES)}")
    model.add_argument("--modality", choices=MODALITIES)
    model.add_argument("--text-model",
                       help=f"hub name, local folder, or '{SCRATCH_TEXT_MODEL}' (no download)")
    model.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                       help="random initialisation")
    model.add_argument("--image-weights", help="local timm checkpoint of the backbone")
    model.add_argument("--freeze", type=float, help="fraction of backbone groups frozen")
    model.add_argument("--text-trainable-layers", type=int)
    model.add_argument("--text-chunk-rows", type=int,
                       help="the trainable text layers run on the batch's real tokens, "
                            "attention on length-sorted chunks of this many rows, each padded "
                            "to its longest description (default 4; 0: the whole batch at "
                            "once, padded)")
    model.add_argument("--dropout", type=float)
    model.add_argument("--fusion-dim", type=int)
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--out", help="run folder (default checkpoints/BACKBONE-MODALITY-TIME)")
    opt.add_argument("--resume", type=Path, metavar="RUN",
                     help="continue a stopped run from its last.pt, with its own config.json")
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--batch-size", type=int)
    opt.add_argument("--lr", type=float)
    opt.add_argument("--weight-decay", type=float)
    opt.add_argument("--warmup-fraction", type=float)
    opt.add_argument("--task-weights", type=parse_task_weights, help="e.g. type=1,school=2")
    opt.add_argument("--seed", type=int)
    opt.add_argument("--device", choices=("auto", "cpu", "cuda"))
    opt.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"))
    opt.add_argument("--compile", action="store_true", default=None,
                     help="torch.compile the image backbone")

    evaluate = commands.add_parser("evaluate", help="evaluate a run folder's best checkpoint")
    evaluate.add_argument("--run", required=True, type=Path)
    evaluate.add_argument("--split", choices=("test", "val"), default="test")
    evaluate.add_argument("--data", help="SemArt folder, if it moved since training")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults of the dataclasses, overridden by the flags that were given."""
    cfg = RunConfig()
    given = {k: v for k, v in vars(args).items() if v is not None}
    quick_start = not any(k in given for k in ("data", "train_csv"))
    if quick_start:
        given = QUICK_START | given
        given["data"] = str(SAMPLE_DIR)
    renames = {"data": "data_dir", "images": "images_dir"}
    for key, value in given.items():
        key = renames.get(key, key)
        for section in (cfg.data, cfg.model, cfg.train):
            if hasattr(section, key):
                setattr(section, key, value)
    return cfg


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The config a stopped run was started with; other run settings are refused."""
    from .checkpoint import LAST
    from .checks import load_run_config

    given = sorted(k for k, v in vars(args).items()
                   if v is not None and k not in ("command", "resume", "device", "num_workers"))
    if given:
        raise ConfigError(f"--resume takes the run's settings from {args.resume}/config.json; "
                         f"drop {', '.join('--' + k.replace('_', '-') for k in given)}")
    cfg = load_run_config(args.resume, needs=(LAST,))
    cfg.train.out = str(args.resume)
    # Where it runs may change; what it computes may not.
    cfg.train.device = args.device or cfg.train.device
    cfg.data.num_workers = args.num_workers if args.num_workers is not None \
        else cfg.data.num_workers
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input and broken run folders end in one message and exit status 2."""
    from .checks import RunFolderError
    from .data import DataError
    from .text import WeightsUnavailable
    from .train import NonFiniteLoss

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ConfigError, DataError, RunFolderError, NonFiniteLoss, WeightsUnavailable,
            FileExistsError, FileNotFoundError) as err:
        print(f"semart-mtl {args.command}: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Carry out one parsed command."""
    if args.command == "make-sample":
        from .sample import make_sample

        out = make_sample(args.dir, seed=args.seed)
        print(f"wrote the generated sample (not SemArt) to {out}")
        return 0
    if args.command == "train":
        from .train import train

        if args.resume is not None:
            train(resume_config(args), resume=True)
            return 0
        cfg = config_from_args(args)
        if cfg.data.data_dir == str(SAMPLE_DIR) and args.data is None:
            _ensure_sample()
        train(cfg)
        return 0
    from .evaluate import evaluate_run

    evaluate_run(args.run, args.split, data_dir=args.data, device=args.device)
    return 0


def _ensure_sample() -> None:
    from .data import GENERATED_MARKER
    from .sample import make_sample

    print("quick start: no --data given, so this trains on the generated sample (not SemArt) "
          f"in {SAMPLE_DIR}, with random initialisation and a small text encoder built from its "
          "descriptions: nothing is downloaded.")
    if not (SAMPLE_DIR / GENERATED_MARKER).is_file():
        make_sample(SAMPLE_DIR)


if __name__ == "__main__":
    sys.exit(main())
