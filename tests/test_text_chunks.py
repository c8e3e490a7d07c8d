"""The trainable text layers over packed rows, attention in chunks: same output and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, BertConfig, DistilBertConfig

from semart_mtl.cli import build_parser, config_from_args
from semart_mtl.config import TASKS
from semart_mtl.model import build_model
from semart_mtl.text import PACKED_ATTENTION, TextEncoder, attention_modules

# Very different lengths, unsorted, with ties and a row as long as the batch.
LENGTHS = [5, 40, 2, 17, 40, 9, 33]
SHAPES = {
    "bert": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, vocab_size=50),
    "distilbert": DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=50),
}


def make_encoder(shape: str, trainable_layers: int, chunk_rows: int) -> TextEncoder:
    torch.manual_seed(0)
    backbone = AutoModel.from_config(SHAPES[shape])
    return TextEncoder(backbone, trainable_layers, chunk_rows).eval()


def hidden_and_mask(dim: int, padded_to: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) hidden states and the (B, L) mask of LENGTHS real tokens."""
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(len(LENGTHS), padded_to, dim, generator=generator)
    positions = torch.arange(padded_to)
    mask = (positions[None] < torch.as_tensor(LENGTHS)[:, None]).long()
    return hidden, mask


def output_and_gradients(encoder: TextEncoder, hidden, mask) -> tuple[torch.Tensor, dict]:
    """Pooled output, and the gradients of a row-weighted loss w.r.t. input and top layers."""
    hidden = hidden.clone().requires_grad_(True)
    pooled = encoder.top(hidden, mask)  # (B, D)
    # Row weights: a row put back in the wrong place would change the loss.
    (pooled * torch.arange(1.0, len(LENGTHS) + 1)[:, None]).pow(2).sum().backward()
    grads = {name: p.grad.clone() for name, p in encoder.top_layers().named_parameters()}
    return pooled.detach(), grads | {"hidden": hidden.grad}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("trainable_layers", [1, 2])
def test_chunked_top_matches_the_whole_batch(shape, trainable_layers):
    whole = make_encoder(shape, trainable_layers, chunk_rows=0)
    hidden, mask = hidden_and_mask(whole.dim, padded_to=max(LENGTHS))
    expected, expected_grads = output_and_gradients(whole, hidden, mask)
    assert expected.shape == (len(LENGTHS), whole.dim)
    for chunk_rows in (1, 2, 3, len(LENGTHS), 50):
        chunked = make_encoder(shape, trainable_layers, chunk_rows)
        pooled, grads = output_and_gradients(chunked, hidden, mask)
        torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-4)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4,
                                       msg=lambda m, name=name: f"{name}: {m}")


def test_chunked_top_ignores_padding_beyond_the_longest_description():
    # Batches padded past their longest row (as to a fixed maximum length) are cut first.
    encoder = make_encoder("distilbert", trainable_layers=1, chunk_rows=3)
    hidden, mask = hidden_and_mask(encoder.dim, padded_to=64)
    cut = max(LENGTHS)
    with torch.no_grad():
        torch.testing.assert_close(encoder.top(hidden, mask),
                                   encoder.top(hidden[:, :cut], mask[:, :cut]))


def test_chunked_top_trains_with_dropout():
    encoder = make_encoder("bert", trainable_layers=1, chunk_rows=2).train()
    hidden, mask = hidden_and_mask(encoder.dim, padded_to=max(LENGTHS))
    pooled = encoder.top(hidden, mask)
    pooled.sum().backward()
    assert pooled.shape == (len(LENGTHS), encoder.dim) and torch.isfinite(pooled).all()
    assert all(p.grad is not None for p in encoder.top_layers().parameters())


def test_chunk_rows_setting_reaches_the_encoder_and_bad_values_are_refused(tmp_path):
    args = build_parser().parse_args(["train", "--text-chunk-rows", "3"])
    cfg = config_from_args(args)
    assert cfg.model.text_chunk_rows == 3
    SHAPES["bert"].save_pretrained(tmp_path)
    cfg.model.modality, cfg.model.text_model = "text", str(tmp_path)
    labels = {task: ["a", "b"] for task in TASKS}
    assert build_model(cfg.model, labels, pretrained=False).text_encoder.chunk_rows == 3
    cfg.model.text_chunk_rows = -1
    with pytest.raises(ValueError, match="text chunk rows must be >= 0"):
        cfg.validate()
    with pytest.raises(ValueError, match="chunk_rows"):
        TextEncoder(AutoModel.from_config(SHAPES["bert"]), 1, chunk_rows=-1)


def test_only_the_trainable_layers_attend_over_packed_rows():
    encoder = make_encoder("distilbert", trainable_layers=1, chunk_rows=2)
    top = attention_modules(encoder.top_layers()[0])
    bottom = attention_modules(encoder.layers[0])
    assert top and bottom
    assert all(m.config._attn_implementation == PACKED_ATTENTION for m in top)
    # The frozen layers, and the encoder's own config, keep the encoder's attention.
    assert all(m.config is encoder.backbone.config for m in bottom)
    assert encoder.backbone.config._attn_implementation != PACKED_ATTENTION
    # The whole encoder still runs (as when the text cache is filled), top layers included.
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    reference = make_encoder("distilbert", trainable_layers=1, chunk_rows=0)
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids, mask), reference(ids, mask))


def test_a_row_without_tokens_pools_to_zero():
    encoder = make_encoder("bert", trainable_layers=1, chunk_rows=2)
    hidden, mask = hidden_and_mask(encoder.dim, padded_to=max(LENGTHS))
    mask[2] = 0
    with torch.no_grad():
        pooled = encoder.top(hidden, mask)
        alone = encoder.top(hidden[[0, 1, 3]], mask[[0, 1, 3]])
    assert (pooled[2] == 0).all()
    torch.testing.assert_close(pooled[[0, 1, 3]], alone)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_encoder_with_eager_attention_runs_packed_and_whole(shape):
    def encoder(chunk_rows):
        torch.manual_seed(0)
        backbone = AutoModel.from_config(SHAPES[shape], attn_implementation="eager")
        return TextEncoder(backbone, 1, chunk_rows).eval()

    packed, whole = encoder(2), encoder(0)
    hidden, mask = hidden_and_mask(packed.dim, padded_to=max(LENGTHS))
    ids = torch.randint(0, 50, mask.shape)
    with torch.no_grad():
        torch.testing.assert_close(packed.top(hidden, mask), whole.top(hidden, mask),
                                   atol=1e-5, rtol=1e-4)
        # The whole encoder (as when the text cache is filled) hands over to eager's equal.
        torch.testing.assert_close(packed(ids, mask), whole(ids, mask), atol=1e-5, rtol=1e-4)
