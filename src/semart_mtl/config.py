"""Run settings: one dataclass per component, nested in `RunConfig`, saved with every run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("type", "school", "timeframe", "medium")
BACKBONES = ("resnet18", "efficientnet_b0", "vit_tiny_patch16_224")
MODALITIES = ("image", "text", "fusion")

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
    # The trainable layers run on length-sorted chunks of this many rows, each cut to its own
    # longest description (0: the whole batch at once). Same output, less padding: on CPU
    # about 2x faster than the whole batch; on a GPU a few more, smaller kernels per step.
    text_chunk_rows: int = 8
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
        if self.model.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.model.modality!r}")
        if self.data.image_check not in ("decode", "header", "exists"):
            raise ValueError(f"image_check must be decode, header or exists, "
                             f"got {self.data.image_check!r}")
        if not 0.0 <= self.model.freeze <= 1.0:
            raise ValueError(f"freeze is a fraction in [0, 1], got {self.model.freeze}")
        if not 0.0 < self.data.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.data.val_fraction}")
        unknown = set(self.train.task_weights) - set(TASKS)
        if unknown:
            raise ValueError(f"task_weights names unknown tasks {sorted(unknown)}; tasks: {TASKS}")
        if not all(0.0 <= w < float("inf") for w in self.train.task_weights.values()):
            raise ValueError(f"task weights must be finite and >= 0: {self.train.task_weights}")
        if self.model.text_chunk_rows < 0:
            raise ValueError(f"text_chunk_rows must be >= 0 (0: the whole batch), "
                             f"got {self.model.text_chunk_rows}")
        for name in ("epochs", "batch_size"):
            if getattr(self.train, name) < 1:
                raise ValueError(f"{name} must be at least 1")


def _build(kind, raw: dict):
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"unknown {kind.__name__} settings: {sorted(unknown)}")
    return kind(**raw)
