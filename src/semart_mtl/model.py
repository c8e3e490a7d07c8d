"""Image encoder, fusion and the four task heads, assembled into one classifier."""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from timm.models import group_parameters
from torch import nn

from .config import TASKS, ModelConfig
from .text import TextEncoder, WeightsUnavailable, load_text_backbone


class ImageEncoder(nn.Module):
    """(B, 3, H, W) -> (B, D_img) pooled features of a timm backbone, its stem partly frozen.

    `freeze` is the fraction of the backbone's parameter groups (timm's coarse grouping:
    stem, then stages for ResNet, block stages for EfficientNet, blocks for ViT) kept
    frozen, counted from the input side.
    """

    def __init__(
        self, name: str, pretrained: bool, freeze: float, weights: str | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        self.backbone = create_backbone(name, pretrained, weights, image_size)
        self.dim = self.backbone.num_features
        self.frozen_modules = freeze_groups(self.backbone, freeze)
        self.channels_last = False

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen stages keep their batch-norm statistics: updating them would change
        # what the frozen weights compute.
        for module in self.frozen_modules:
            module.eval()
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.backbone(image)

    def use_channels_last(self) -> None:
        """NHWC weights and inputs: faster convolutions on GPU tensor cores and on CPU."""
        self.backbone.to(memory_format=torch.channels_last)
        self.channels_last = True


def create_backbone(
    name: str, pretrained: bool, weights: str | None, image_size: int | None = None
) -> nn.Module:
    """A timm model without its classifier, from the hub, a local file, or random init."""
    kwargs = {"num_classes": 0}
    default_cfg = timm.models.get_pretrained_cfg(name)
    if image_size and default_cfg is not None and default_cfg.fixed_input_size:
        # ViTs are built for one input size; timm resamples position embeddings to this one.
        kwargs["img_size"] = image_size
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--image-weights {weights}: no such file")
        try:
            stored = timm.models.load_state_dict(weights)
        except Exception as err:  # torch raises many kinds for a file that is no checkpoint
            raise WeightsUnavailable(
                f"--image-weights {weights}: not a PyTorch checkpoint that can be read safely "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
            ) from err
        # timm loads a local file through the pretrained path, dropping classifier weights.
        overlay = {"file": str(weights)}
        try:
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
            )
        except RuntimeError as err:  # tensors of the wrong shape
            first = str(err).strip().splitlines()[:3]
            raise WeightsUnavailable(
                f"--image-weights {weights}: does not fit timm's {name!r}: {' '.join(first)}"
            ) from err
        check_weights_file(model, name, weights, stored)
        return model
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise WeightsUnavailable(
            f"cannot load pretrained weights for the image backbone {name!r}: the hub cannot be "
            "reached and they are not in the local cache. Pass --image-weights FILE (a timm "
            "checkpoint) or --no-pretrained (random initialisation)."
        ) from err


def check_weights_file(model: nn.Module, name: str, weights: str, stored: dict) -> None:
    """Refuse a file that did not fill the backbone.

    timm loads pretrained files non-strictly and only logs the keys it could not place, so a
    checkpoint of another architecture, or with another library's parameter names, would
    otherwise leave a randomly initialised backbone that looks pretrained.
    """
    missing = [key for key in model.state_dict() if key not in stored]
    if missing:
        raise WeightsUnavailable(
            f"--image-weights {weights}: holds no weights for {len(missing)} of the "
            f"{len(model.state_dict())} tensors of timm's {name!r} (e.g. {missing[:3]}); its "
            f"keys look like {list(stored)[:3]}. Use a timm checkpoint of this architecture."
        )


def freeze_groups(backbone: nn.Module, fraction: float) -> list[nn.Module]:
    """Freeze the first `fraction` of the backbone's coarse groups; return frozen modules."""
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    n_frozen = math.ceil(fraction * len(ordered))
    frozen_names = {name for group in ordered[:n_frozen] for name in group}
    for name, param in backbone.named_parameters():
        param.requires_grad = name not in frozen_names
    # Modules all of whose parameters are frozen (for keeping their norm layers in eval).
    frozen = []
    for module in backbone.modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            frozen.append(module)
    return frozen


def projection(dim_in: int, dim_out: int, dropout: float) -> nn.Sequential:
    """(B, D_in) -> (B, D_out): standardise, drop out, project.

    Pooled encoder features share a large common component (every description's mean token
    vector looks alike); standardising each feature over the batch lets the small differences
    that carry the labels reach the heads at ordinary learning rates.
    """
    return nn.Sequential(nn.BatchNorm1d(dim_in), nn.Dropout(dropout), nn.Linear(dim_in, dim_out))


class FusionClassifier(nn.Module):
    """Image and/or description -> one logit vector per task.

    image (B, 3, H, W) -> (B, D_img) -> batch norm, dropout, linear -> (B, F)
    text  (B, L)       -> (B, D_txt) -> batch norm, dropout, linear -> (B, F)
    fusion: concat (B, 2F) -> linear, GELU, dropout -> (B, F) -> one linear head per task
    """

    def __init__(
        self,
        n_classes: dict[str, int],
        image_encoder: ImageEncoder | None,
        text_encoder: TextEncoder | None,
        fusion_dim: int = 512,
        dropout: float = 0.3,
    ):
        super().__init__()
        if image_encoder is None and text_encoder is None:
            raise ValueError("a classifier needs an image encoder, a text encoder or both")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        branches = 0
        if image_encoder is not None:
            self.image_proj = projection(image_encoder.dim, fusion_dim, dropout)
            branches += 1
        if text_encoder is not None:
            self.text_proj = projection(text_encoder.dim, fusion_dim, dropout)
            branches += 1
        self.fusion = nn.Sequential(
            nn.Linear(branches * fusion_dim, fusion_dim), nn.GELU(), nn.Dropout(dropout)
        )
        # A list, not a ModuleDict: "type" is taken by nn.Module.type.
        self.tasks = list(n_classes)
        self.heads = nn.ModuleList([nn.Linear(fusion_dim, n) for n in n_classes.values()])

    def forward_features(self, batch: dict) -> torch.Tensor:
        """Batch dict -> (B, F) fused representation."""
        parts = []
        if self.image_encoder is not None:
            parts.append(self.image_proj(self.image_encoder(batch["image"])))
        if self.text_encoder is not None:
            parts.append(self.text_proj(self.encode_text(batch)))
        return self.fusion(torch.cat(parts, dim=1))

    def encode_text(self, batch: dict) -> torch.Tensor:
        """(B, D_txt) description vectors from token ids or from the text cache's output."""
        dtype = self.text_proj[-1].weight.dtype  # the cache holds float16
        if "text_vector" in batch:
            return batch["text_vector"].to(dtype)
        if "hidden" in batch:
            # (B, L, D) frozen hidden states -> trainable top layers -> (B, D)
            return self.text_encoder.top(batch["hidden"].to(dtype), batch["attention_mask"])
        return self.text_encoder(batch["input_ids"], batch["attention_mask"])

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        features = self.forward_features(batch)
        return {task: head(features) for task, head in zip(self.tasks, self.heads)}


def build_model(
    cfg: ModelConfig, labels: dict[str, list[str]], text_source: str | None = None,
    pretrained: bool | None = None, image_size: int | None = None,
) -> FusionClassifier:
    """The classifier a config describes.

    `text_source` is where the text model's config and tokenizer are read (a run folder's
    copy when rebuilding); `pretrained` overrides the config (False when weights come from a
    checkpoint anyway); `image_size` is the input size when not the backbone's own.
    """
    pretrained = cfg.pretrained if pretrained is None else pretrained
    image_encoder = text_encoder = None
    if cfg.modality in ("image", "fusion"):
        weights = cfg.image_weights if pretrained else None
        image_encoder = ImageEncoder(cfg.backbone, pretrained, cfg.freeze, weights, image_size)
    if cfg.modality in ("text", "fusion"):
        source = text_source or cfg.text_model
        backbone = load_text_backbone(source, pretrained and source == cfg.text_model)
        text_encoder = TextEncoder(backbone, cfg.text_trainable_layers, cfg.text_chunk_rows)
    n_classes = {task: len(labels[task]) for task in TASKS}
    return FusionClassifier(n_classes, image_encoder, text_encoder, cfg.fusion_dim, cfg.dropout)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
