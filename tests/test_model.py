"""Backbones, freeze policies and the fusion model, on tiny inputs on the CPU."""

import pytest
import torch
from torch import nn

from semart_mtl.config import BACKBONES, TASKS, ModelConfig
from semart_mtl.evaluate import multitask_loss
from semart_mtl.model import ImageEncoder, build_model
from semart_mtl.text import TextEncoder, build_scratch_text_model, load_text_backbone

LABELS = {"type": ["a", "b", "c"], "school": ["x", "y"], "timeframe": ["1", "2", "3", "4"],
          "medium": ["canvas", "wood"]}
DESCRIPTIONS = ["a portrait of a man in black", "a landscape with a river and hills",
                "the virgin and child with saints", "flowers in a vase on a ledge"] * 5


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return build_scratch_text_model(DESCRIPTIONS, tmp_path_factory.mktemp("text"), vocab_size=200)


def _batch(text_dir, n=2, size=64):
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(text_dir)(DESCRIPTIONS[:n], padding=True,
                                                     return_tensors="pt")
    labels = torch.tensor([[0, 1, 3, 0], [2, 0, 1, 1]])[:n]
    return {"image": torch.randn(n, 3, size, size), "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"], "labels": labels}


# The text-only model has no backbone, so it is built once.
CASES = [(b, m) for b in BACKBONES for m in ("image", "fusion")] + [(BACKBONES[0], "text")]


@pytest.mark.parametrize("backbone, modality", CASES)
def test_forward_backward(backbone, modality, text_dir):
    cfg = ModelConfig(backbone=backbone, modality=modality, pretrained=False, fusion_dim=32)
    model = build_model(cfg, LABELS, text_source=str(text_dir), image_size=64)
    logits = model(_batch(text_dir))
    assert {t: v.shape for t, v in logits.items()} == {
        t: torch.Size([2, len(LABELS[t])]) for t in TASKS}
    loss, per_task = multitask_loss(logits, _batch(text_dir)["labels"])
    assert torch.isfinite(loss) and set(per_task) == set(TASKS)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


# Parameter-name prefixes frozen at the default freeze fraction (0.5), and some that train.
FROZEN = {
    "resnet18": (["conv1.", "bn1.", "layer1.", "layer2."], ["layer3.", "layer4."]),
    "efficientnet_b0": (["conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2."],
                        ["blocks.3.", "blocks.4.", "blocks.5.", "blocks.6.", "conv_head."]),
    "vit_tiny_patch16_224": (["patch_embed.", "cls_token", "pos_embed"]
                             + [f"blocks.{i}." for i in range(6)],
                             [f"blocks.{i}." for i in range(6, 12)] + ["norm."]),
}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_freeze_policy(backbone):
    encoder = ImageEncoder(backbone, pretrained=False, freeze=0.5, image_size=64)
    frozen, trained = FROZEN[backbone]
    for name, param in encoder.backbone.named_parameters():
        if any(name.startswith(prefix) for prefix in frozen):
            assert not param.requires_grad, name
        elif any(name.startswith(prefix) for prefix in trained):
            assert param.requires_grad, name
    # Frozen batch norms keep their running statistics in training mode.
    encoder.train()
    for module in encoder.frozen_modules:
        assert not module.training
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(m.training == any(p.requires_grad for p in m.parameters()) for m in norms)


@pytest.mark.parametrize("fraction, expected", [(0.0, 0.0), (1.0, 1.0)])
def test_freeze_extremes(fraction, expected):
    encoder = ImageEncoder("resnet18", pretrained=False, freeze=fraction)
    params = list(encoder.parameters())
    assert sum(not p.requires_grad for p in params) / len(params) == expected


def test_text_encoder_trains_only_its_last_layer(text_dir):
    backbone = load_text_backbone(str(text_dir), pretrained=False)
    encoder = TextEncoder(backbone, trainable_layers=1)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    last = len(encoder.layers) - 1
    assert trainable and all(f"layer.{last}." in n for n in trainable)
    assert not any("embeddings" in n for n in trainable)
    encoder.train()
    assert not backbone.embeddings.training and encoder.layers[-1].training


@pytest.mark.parametrize("trainable_layers", [0, 1, 2])
def test_split_text_encoder_matches_the_whole_model(text_dir, trainable_layers):
    backbone = load_text_backbone(str(text_dir), pretrained=False)
    encoder = TextEncoder(backbone, trainable_layers).eval()
    batch = _batch(text_dir, n=2)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    full = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    expected = (full * weights).sum(1) / weights.sum(1)
    torch.testing.assert_close(encoder(ids, mask), expected)


def test_image_weights_file_loads_into_the_backbone(tmp_path):
    import timm

    source = timm.create_model("resnet18", pretrained=False)  # with its classifier, as saved
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    encoder = ImageEncoder("resnet18", pretrained=True, freeze=0.5,
                           weights=str(tmp_path / "resnet18.pth"))
    torch.testing.assert_close(encoder.backbone.conv1.weight, source.conv1.weight)


def test_image_weights_of_another_architecture_are_refused(tmp_path):
    import timm

    from semart_mtl.text import WeightsUnavailable

    other = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0)
    torch.save(other.state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(WeightsUnavailable, match="effnet.pth: does not fit timm's 'resnet18'"):
        ImageEncoder("resnet18", pretrained=True, freeze=0.5, weights=str(tmp_path / "effnet.pth"))
    # Keys of another library: nothing fits, nothing may pass for pretrained.
    renamed = {f"_{key}": value for key, value in other.state_dict().items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(WeightsUnavailable, match="renamed.pth: holds no weights for"):
        ImageEncoder("efficientnet_b0", pretrained=True, freeze=0.5,
                     weights=str(tmp_path / "renamed.pth"))


@pytest.mark.parametrize("content", [b"", b"hello", bytes(range(256)) * 40])
def test_a_weights_file_that_is_no_checkpoint_is_refused(tmp_path, content):
    from semart_mtl.text import WeightsUnavailable

    (tmp_path / "garbage.pth").write_bytes(content)
    with pytest.raises(WeightsUnavailable, match="garbage.pth: not a PyTorch checkpoint"):
        ImageEncoder("resnet18", pretrained=True, freeze=0.5,
                     weights=str(tmp_path / "garbage.pth"))


def test_a_text_model_saved_in_half_precision_loads_in_float32(text_dir, tmp_path):
    half = load_text_backbone(str(text_dir), pretrained=False).to(torch.bfloat16)
    half.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(text_dir).save_pretrained(tmp_path)
    cfg = ModelConfig(modality="text", text_model=str(tmp_path), fusion_dim=16)
    model = build_model(cfg, LABELS)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    logits = model(_batch(text_dir))
    assert torch.isfinite(logits["type"]).all()
