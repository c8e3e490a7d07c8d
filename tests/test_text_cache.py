"""The text cache: same numbers as the full encoder, and never a stale entry."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from semart_mtl.data import collate, read_split
from semart_mtl.model import FusionClassifier
from semart_mtl.text import (
    TextEncoder, build_scratch_text_model, load_text_backbone, load_tokenizer,
)
from semart_mtl.text_cache import DATA_FILE, HiddenStore, TextCache, file_lock, store_key

from conftest import REAL_DIR, requires_real

N_CLASSES = {"type": 3, "school": 4, "timeframe": 2, "medium": 5}
# float16 keeps ~3 significant digits; attention in the top layer can amplify a rounding
# here and there, so the worst element gets a wider margin than the average one.
ATOL, RTOL, MEAN_ATOL = 2e-2, 1e-2, 2e-3


def assert_half_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)
    assert (actual - expected).abs().mean() < MEAN_ATOL


@pytest.fixture(scope="module")
def text_folder(sample_dir, tmp_path_factory):
    descriptions = read_split(sample_dir / "semart_train.csv")["DESCRIPTION"].tolist()
    return build_scratch_text_model(descriptions, tmp_path_factory.mktemp("text"))


def make_encoder(folder, seed: int, trainable_layers: int = 1) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(load_text_backbone(str(folder), pretrained=False), trainable_layers)


def tokenize(folder, descriptions: list[str], max_length: int = 48) -> list[list[int]]:
    return load_tokenizer(str(folder))(descriptions, truncation=True, max_length=max_length)[
        "input_ids"]


def batches(token_ids, cached):
    """The same rows as token ids and as cached output, each collated into one batch."""
    plain = collate([{"labels": torch.zeros(4, dtype=torch.long), "index": i,
                      "input_ids": torch.as_tensor(ids)} for i, ids in enumerate(token_ids)])
    fast = collate([{"labels": torch.zeros(4, dtype=torch.long), "index": i,
                     cached.item_key: cached[i]} for i in range(len(token_ids))])
    return plain, fast


@pytest.mark.parametrize("trainable_layers", [1, 0])
def test_cached_forward_equals_full_forward(sample_dir, text_folder, tmp_path, trainable_layers):
    descriptions = read_split(sample_dir / "semart_val.csv")["DESCRIPTION"].tolist()[:12]
    ids = tokenize(text_folder, descriptions)
    assert len({len(x) for x in ids}) > 1  # padding inside the batch is exercised
    encoder = make_encoder(text_folder, seed=0, trainable_layers=trainable_layers)
    cache = TextCache(encoder, 48, tmp_path)
    assert cache.fill(ids, show_progress=False) == len(set(map(tuple, ids)))
    cached = cache.rows(ids)
    assert cached.item_key == ("text_vector" if trainable_layers == 0 else "hidden")

    model = FusionClassifier(N_CLASSES, None, encoder, fusion_dim=16).eval()
    plain, fast = batches(ids, cached)
    with torch.no_grad():
        full = model.encode_text(plain)  # (B, D)
        from_cache = model.encode_text(fast)
        logits_full, logits_cache = model(plain), model(fast)
    assert full.shape == from_cache.shape == (len(ids), encoder.dim)
    assert_half_close(from_cache, full)
    for task in N_CLASSES:
        assert_half_close(logits_cache[task], logits_full[task])


def test_gradients_reach_the_top_layer_through_the_cache(sample_dir, text_folder, tmp_path):
    ids = tokenize(text_folder, ["A portrait of a nobleman.", "Fruit on a ledge, oil on wood."])
    encoder = make_encoder(text_folder, seed=0)
    cache = TextCache(encoder, 48, tmp_path)
    cache.fill(ids, show_progress=False)
    model = FusionClassifier(N_CLASSES, None, encoder, fusion_dim=16).train()
    _, fast = batches(ids, cache.rows(ids))
    sum(out.sum() for out in model(fast).values()).backward()
    top = encoder.top_layers()[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())


def test_changed_description_or_model_never_hits_a_stale_entry(text_folder, tmp_path):
    texts = ["The Virgin and saints.", "Hills and a river under a wide sky."]
    ids = tokenize(text_folder, texts)
    cache = TextCache(make_encoder(text_folder, seed=0), 48, tmp_path)
    assert cache.fill(ids, show_progress=False) == 2

    # The same model rebuilt from the same weights shares the store and finds everything.
    again = TextCache(make_encoder(text_folder, seed=0), 48, tmp_path)
    assert again.folder == cache.folder
    assert again.fill(ids, show_progress=False) == 0

    # A changed description is computed afresh; the unchanged one is reused.
    edited = tokenize(text_folder, [texts[0], texts[1] + " Restored in 1890."])
    assert again.fill(edited, show_progress=False) == 1
    with pytest.raises(KeyError, match="not in the text cache"):
        TextCache(make_encoder(text_folder, seed=0), 48, tmp_path / "empty").rows(ids)

    # Other weights, another maximum length or other trainable layers: another store.
    other_weights = TextCache(make_encoder(text_folder, seed=1), 48, tmp_path)
    other_length = TextCache(make_encoder(text_folder, seed=0), 32, tmp_path)
    other_layers = TextCache(make_encoder(text_folder, seed=0, trainable_layers=2), 48, tmp_path)
    folders = {cache.folder, other_weights.folder, other_length.folder, other_layers.folder}
    assert len(folders) == 4
    assert other_weights.fill(ids, show_progress=False) == 2


def test_cached_rows_survive_a_loader_worker(text_folder, tmp_path):
    ids = tokenize(text_folder, ["Flowers in a vase.", "A scene of everyday life in a tavern."])
    cache = TextCache(make_encoder(text_folder, seed=0), 48, tmp_path)
    cache.fill(ids, show_progress=False)
    rows = cache.rows(ids)
    first = rows[1]
    copy = pickle.loads(pickle.dumps(rows))  # what a DataLoader worker receives
    assert copy.store._array is None
    torch.testing.assert_close(copy[1], first)
    assert first.dtype == torch.float16 and first.shape == (len(ids[1]), 128)


def test_store_keeps_keys_ending_in_zero_bytes(tmp_path):
    store = HiddenStore(tmp_path, dim=4)
    keys = [bytes(15) + b"\x01", b"\x07" + bytes(15), bytes(16)]
    with file_lock(tmp_path):
        store.append([(k, np.full((i + 1, 4), i, np.float16)) for i, k in enumerate(keys)])
    reopened = HiddenStore(tmp_path, dim=4)
    assert reopened.missing(keys) == []
    assert [reopened.get(k).tolist() for k in keys] == [[[i] * 4] * (i + 1) for i in range(3)]


@requires_real
def test_real_descriptions_round_trip(text_folder, tmp_path):
    frame = read_split(REAL_DIR / "semart_val.csv")
    longest = frame["DESCRIPTION"].str.len().nlargest(2).index
    texts = pd.concat([frame.head(20), frame.loc[longest]])  # some truncated at max_length
    ids = tokenize(text_folder, texts["DESCRIPTION"].tolist(), max_length=256)
    encoder = make_encoder(text_folder, seed=0)
    cache = TextCache(encoder, 256, tmp_path)
    cache.fill(ids, batch_size=8, show_progress=False)
    plain, fast = batches(ids, cache.rows(ids))
    with torch.no_grad():
        assert_half_close(encoder.top(fast["hidden"].float(), fast["attention_mask"]),
                          encoder(plain["input_ids"], plain["attention_mask"]))


def test_a_write_cut_short_does_not_shift_later_entries(tmp_path):
    store = HiddenStore(tmp_path, dim=4)
    first = np.arange(8, dtype=np.float16).reshape(2, 4)
    store.append([(b"a" * 16, first)])
    with open(tmp_path / DATA_FILE, "ab") as handle:  # a kill mid-row left 3 stray bytes
        handle.write(b"xyz")
    second = np.arange(8, 20, dtype=np.float16).reshape(3, 4)
    store.append([(b"b" * 16, second)])
    reopened = HiddenStore(tmp_path, dim=4)
    np.testing.assert_array_equal(reopened.get(b"a" * 16), first)
    np.testing.assert_array_equal(reopened.get(b"b" * 16), second)


def test_where_the_model_was_loaded_from_does_not_change_the_key(text_folder, tmp_path):
    encoder = TextEncoder(load_text_backbone(str(text_folder), pretrained=False), 1)
    key = store_key(encoder, 32)
    encoder.backbone.config._name_or_path = str(tmp_path / "run" / "text_encoder")
    assert store_key(encoder, 32) == key
