"""Run settings: one dataclass per component, nested in `RunConfig`, saved with every run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("type", "school", "timeframe", "medium")
BACKBONES = ("resnet18", "efficientnet_b0", "vit_tiny_patch16_224")
MODALITIES = ("image", "text", "fusion")
# How closely paintings are checked before a run, slowest and surest first.
IMAGE_CHECKS = ("decode", "header", "exists")

# The text model name that means "build a small encoder and tokenizer from the training
# descriptions": no download, random initialisation. Used by the quick start and the tests.
SCRATCH_TEXT_MODEL = "scratch"


@dataclass
class DataConfig:
    """Where the paintings are and how they are read."""

    data_dir: str | None = None  # SemArt folder: semart_{train,val,test}.csv and Images/
    train_csv: str | None = None  # explicit CSVs override the folder's
    val_csv: str | None = None
    test_csv: str | None = None
    images_dir: str | None = None
    val_fraction: float = 0.1  # carved from train (stratified) when no validation CSV exists
    image_size: int | None = None  # None: the backbone's own input size
    max_length: int = 256  # description tokens
    num_workers: int | None = None  # None: chosen from the machine
    # Speed: none of these changes what is learned (see text_cache.py and image_cache.py).
    cache_dir: str = ".cache/semart_mtl"  # text and image caches, reused across runs
    text_cache: bool = True  # keep the frozen text layers' output on disk, run only the top
    image_cache: bool = True  # decode resized copies instead of the full-size JPEGs
    image_cache_size: int | None = None  # shorter side of the copies; None: from the backbone
    group_by_length: bool = False  # batches of similar description lengths (less padding)
    generated: bool = False  # set when the data came from `make-sample`
    image_check: str = "decode"  # before training: decode | header | exists (fastest)
    skip_bad_images: bool = False  # leave unreadable paintings out instead of stopping


@dataclass
class ModelConfig:
    """Backbone, text encoder, fusion and heads."""

    backbone: str = "resnet18"  # any timm name
    modality: str = "fusion"  # image | text | fusion
    text_model: str = "distilbert-base-uncased"  # hub name, local folder or "scratch"
    pretrained: bool = True
    image_weights: str | None = None  # local timm checkpoint for offline machines
    freeze: float = 0.5  # fraction of the backbone's groups, stem first, kept frozen
    text_trainable_layers: int = 1  # transformer layers fine-tuned, counted from the top
    # The trainable layers run on the batch's real tokens packed end to end, and attention on
    # length-sorted chunks of this many rows, each padded to its own longest (0: the whole
    # batch at once, padded to its longest). Same output, less padding. On 2 CPU cores, 3
    # batches of 32 real SemArt descriptions through the trainable DistilBERT layer (forward
    # and backward) took a median 3.6 s at 4 rows, 3.8 s at 8, 3.9 s at 2, 4.2 s at 1; the
    # layers chunked whole at 4 rows 4.2 s, unchunked 8 to 10 s. On a GPU: a few more, smaller
    # kernels per step.
    text_chunk_rows: int = 4
    dropout: float = 0.3
    fusion_dim: int = 512


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05  # of all steps, then cosine decay to zero
    task_weights: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TASKS})
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that has it) | no | fp16 | bf16
    compile: bool = False  # torch.compile the image backbone (slow first steps, faster after)
    out: str | None = None  # run folder; None: checkpoints/<backbone>-<modality>-<time>


@dataclass
class RunConfig:
    """Everything needed to repeat a run and to rebuild its model."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Class names per task, fitted on the training rows; filled in by `train`.
    labels: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> RunConfig:
        """Inverse of `to_dict`; unknown keys are an error so a stale file is noticed."""
        return cls(
            data=_build(DataConfig, raw.get("data", {})),
            model=_build(ModelConfig, raw.get("model", {})),
            train=_build(TrainConfig, raw.get("train", {})),
            labels={task: list(names) for task, names in raw.get("labels", {}).items()},
        )

    def save(self, path: str | Path) -> None:
        """Write as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a file written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def validate(self) -> None:
        """Reject settings that would only fail later, deep inside a run."""
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        data, model, train = self.data, self.model, self.train
        need(model.modality in MODALITIES, f"modality must be one of {MODALITIES}, "
                                           f"got {model.modality!r}")
        need(data.image_check in IMAGE_CHECKS,
             f"image_check must be decode, header or exists, got {data.image_check!r}")
        need(data.image_size is None or data.image_size >= 16,
             f"image size must be at least 16 pixels, got {data.image_size}")
        need(data.max_length >= 2, f"max length must be at least 2 tokens, got {data.max_length}")
        need(0.0 < data.val_fraction < 1.0, f"val fraction must lie in (0, 1), "
                                            f"got {data.val_fraction}")
        need(0.0 <= model.freeze <= 1.0, f"freeze is a fraction in [0, 1], got {model.freeze}")
        need(0.0 <= model.dropout < 1.0, f"dropout must lie in [0, 1), got {model.dropout}")
        need(model.fusion_dim >= 1, f"fusion dim must be at least 1, got {model.fusion_dim}")
        need(model.text_trainable_layers >= 0,
             f"text trainable layers must be >= 0, got {model.text_trainable_layers}")
        need(model.text_chunk_rows >= 0, f"text chunk rows must be >= 0 (0: the whole batch), "
                                         f"got {model.text_chunk_rows}")
        if model.modality != "text":
            import timm

            need(timm.is_model(model.backbone), f"{model.backbone!r} is not a timm model name "
                                                "(see timm.list_models())")
        unknown = set(train.task_weights) - set(TASKS)
        need(not unknown, f"task weights name unknown tasks {sorted(unknown)}; tasks: {TASKS}")
        need(all(0.0 <= w < float("inf") for w in train.task_weights.values()),
             f"task weights must be finite and >= 0: {train.task_weights}")
        need(train.epochs >= 1, f"epochs must be at least 1, got {train.epochs}")
        need(train.batch_size >= 1, f"batch size must be at least 1, got {train.batch_size}")
        need(train.lr > 0, f"learning rate must be positive, got {train.lr}")
        need(train.weight_decay >= 0, f"weight decay must be >= 0, got {train.weight_decay}")
        need(0.0 <= train.warmup_fraction < 1.0,
             f"warm-up fraction must lie in [0, 1), got {train.warmup_fraction}")
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    def absolute_paths(self) -> None:
        """Make the data paths absolute, so the saved run works from any folder."""
        for name in ("data_dir", "train_csv", "val_csv", "test_csv", "images_dir"):
            value = getattr(self.data, name)
            if value is not None:
                setattr(self.data, name, str(Path(value).resolve()))


class ConfigError(ValueError):
    """Settings that cannot make a run; the message lists every one."""


def _build(kind, raw: dict):
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"unknown {kind.__name__} settings: {sorted(unknown)}")
    return kind(**raw)
