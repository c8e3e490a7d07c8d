"""Disk cache of the frozen text encoder's output, so an epoch runs only the trainable top.

The frozen bottom of `TextEncoder` (embeddings and all but the trainable top layers, always
in eval mode) maps a description's token ids to the same hidden states every epoch. They are
computed once and kept in a store: one flat float16 array of shape (total tokens, D),
memory-mapped, plus an index from a hash of each description's token ids to its rows. With a
fully frozen encoder (no trainable layers) the store keeps the pooled (1, D) vector instead.

A store is named by everything that decides those numbers: the model's config, a hash of its
frozen weights, the maximum length and the number of trainable layers. Each entry is named
by a hash of the token ids, so a changed description (or tokenizer) never meets a stale entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .text import TextEncoder

DATA_FILE = "hidden.f16"
INDEX_FILE = "index.npz"
META_FILE = "meta.json"
HASH_BYTES = 16


@contextmanager
def file_lock(folder: Path):
    """Exclusive lock on `folder` across processes (several GPUs, or two runs sharing a cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tokens_hash(token_ids: list[int]) -> bytes:
    """Entry name: a digest of one description's token ids (after truncation)."""
    raw = np.asarray(token_ids, np.int64).tobytes()
    return hashlib.blake2b(raw, digest_size=HASH_BYTES).digest()


def frozen_weights_hash(encoder: TextEncoder) -> str:
    """Digest of every frozen parameter and buffer: what the cached numbers depend on."""
    top = {id(p) for p in encoder.top_layers().parameters()}
    digest = hashlib.blake2b(digest_size=HASH_BYTES)
    for name, tensor in sorted(encoder.backbone.state_dict(keep_vars=True).items()):
        if id(tensor) in top:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def store_key(encoder: TextEncoder, max_length: int) -> dict:
    """Everything that decides the cached numbers, as a JSON-able dict."""
    return {
        # Where the model was loaded from, and with which library version, changes nothing.
        "config": _config_without(encoder.backbone.config,
                                  ("_name_or_path", "transformers_version", "dtype")),
        "frozen_weights": frozen_weights_hash(encoder),
        "max_length": max_length,
        "trainable_layers": encoder.trainable_layers,
        "pooled": encoder.trainable_layers == 0,
        "dim": encoder.dim,
    }


def _config_without(config, keys: tuple[str, ...]) -> str:
    values = {k: v for k, v in config.to_dict().items() if k not in keys}
    return json.dumps(values, sort_keys=True, default=str)


class HiddenStore:
    """Append-only float16 store of variable-length (L, D) arrays, keyed by token-id hash."""

    def __init__(self, folder: str | Path, dim: int):
        self.folder = Path(folder)
        self.dim = dim
        self.folder.mkdir(parents=True, exist_ok=True)
        self._index: dict[bytes, tuple[int, int]] = {}
        self._array: np.memmap | None = None
        self.reload()

    def reload(self) -> None:
        """Re-read the index (another process may have added entries)."""
        self._array = None
        path = self.folder / INDEX_FILE
        if not path.is_file():
            self._index = {}
            return
        with np.load(path) as saved:
            keys, offsets, lengths = saved["keys"], saved["offsets"], saved["lengths"]
        self._index = {
            k.tobytes(): (int(o), int(n)) for k, o, n in zip(keys, offsets, lengths)
        }

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys: list[bytes]) -> list[bytes]:
        """The keys (deduplicated, in first-seen order) that have no entry yet."""
        return [k for k in dict.fromkeys(keys) if k not in self._index]

    def append(self, entries: list[tuple[bytes, np.ndarray]]) -> None:
        """Write (key, (L, D) float16) entries; call under `file_lock(self.folder)`."""
        data = self.folder / DATA_FILE
        offset = data.stat().st_size // (2 * self.dim) if data.is_file() else 0
        with open(data, "r+b" if data.is_file() else "wb") as handle:
            # A write cut short earlier (a kill, a full disk) left a partial row: drop it, so
            # every entry stays where its offset says.
            handle.truncate(offset * 2 * self.dim)
            handle.seek(offset * 2 * self.dim)
            for key, rows in entries:
                if rows.dtype != np.float16 or rows.ndim != 2 or rows.shape[1] != self.dim:
                    raise ValueError(f"expected (L, {self.dim}) float16, got {rows.shape} "
                                     f"{rows.dtype}")
                handle.write(rows.tobytes())
                self._index[key] = (offset, len(rows))
                offset += len(rows)
            handle.flush()
            os.fsync(handle.fileno())
        self._write_index()
        self._array = None

    def _write_index(self) -> None:
        # Raw uint8 rows: numpy's bytes dtype would drop a digest's trailing zero bytes.
        keys = np.frombuffer(b"".join(self._index), dtype=np.uint8).reshape(-1, HASH_BYTES)
        spans = np.asarray(list(self._index.values()), dtype=np.int64).reshape(-1, 2)
        tmp = self.folder / f"{INDEX_FILE}.tmp.npz"
        np.savez(tmp, keys=keys, offsets=spans[:, 0], lengths=spans[:, 1])
        # Readers see either the old index or the new one, never half of one.
        os.replace(tmp, self.folder / INDEX_FILE)

    def get(self, key: bytes) -> np.ndarray:
        """(L, D) float16 view of one entry (memory-mapped, not copied)."""
        if self._array is None:
            rows = (self.folder / DATA_FILE).stat().st_size // (2 * self.dim)
            self._array = np.memmap(self.folder / DATA_FILE, np.float16, "r",
                                    shape=(rows, self.dim))
        offset, length = self._index[key]
        return self._array[offset:offset + length]

    def __getstate__(self) -> dict:
        # A memmap would be pickled as a full copy into every loader worker; reopen instead.
        return self.__dict__ | {"_array": None}


class TextCache:
    """The store of one text encoder at one maximum length, under a cache folder."""

    def __init__(self, encoder: TextEncoder, max_length: int, root: str | Path):
        key = store_key(encoder, max_length)
        name = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12)
        self.folder = Path(root) / "text" / name.hexdigest()
        self.encoder = encoder
        self.pooled = key["pooled"]
        self.store = HiddenStore(self.folder, encoder.dim)
        meta = self.folder / META_FILE
        if not meta.is_file():
            readable = {k: v for k, v in key.items() if k != "config"}
            readable["model_type"] = encoder.backbone.config.model_type
            meta.write_text(json.dumps(readable, indent=2) + "\n")

    def fill(
        self, token_ids: list[list[int]], device: torch.device | str | None = None,
        batch_size: int = 64, show_progress: bool = True,
    ) -> int:
        """Compute and store every description not cached yet; return how many were added.

        `device`: where the encoder runs; by default where it already is (the training device).
        """
        with file_lock(self.folder):
            self.store.reload()
            by_key = {tokens_hash(ids): ids for ids in token_ids}
            todo = self.store.missing(list(by_key))
            if not todo:
                return 0
            # Similar lengths in a batch waste the least padding.
            todo.sort(key=lambda k: len(by_key[k]))
            encoder = self.encoder
            was_training, old_device = encoder.training, _device_of(encoder)
            device = device or old_device
            encoder.to(device).eval()
            bar = tqdm(total=len(todo), desc="caching text", unit="description",
                       disable=not show_progress)
            try:
                for start in range(0, len(todo), batch_size):
                    keys = todo[start:start + batch_size]
                    self.store.append(list(zip(keys, self._encode(
                        [by_key[k] for k in keys], device))))
                    bar.update(len(keys))
            finally:
                bar.close()
                encoder.to(old_device).train(was_training)
            return len(todo)

    @torch.no_grad()
    def _encode(self, batch_ids: list[list[int]], device) -> list[np.ndarray]:
        """Token ids -> per description (L, D) hidden states or a (1, D) pooled vector."""
        ids = [torch.as_tensor(x) for x in batch_ids]
        padded = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True).to(device)  # (B, L)
        lengths = torch.as_tensor([len(x) for x in ids], device=device)
        mask = (torch.arange(padded.shape[1], device=device)[None] < lengths[:, None]).long()
        hidden = self.encoder.frozen_hidden(padded, mask)  # (B, L, D)
        if self.pooled:
            hidden = self.encoder.top(hidden, mask)[:, None]  # (B, D) -> (B, 1, D)
            lengths = torch.ones_like(lengths)
        half = hidden.float().cpu().numpy().astype(np.float16)
        if not np.isfinite(half).all():
            raise FloatingPointError(
                "text encoder output overflows float16; it cannot be cached (use --no-text-cache)"
            )
        return [half[i, :n] for i, n in enumerate(lengths.tolist())]

    def rows(self, token_ids: list[list[int]]) -> CachedText:
        """Per-row access to the cached output of these descriptions (all must be cached)."""
        self.store.reload()
        keys = [tokens_hash(ids) for ids in token_ids]
        absent = self.store.missing(keys)
        if absent:
            raise KeyError(f"{len(absent)} description(s) are not in the text cache "
                           f"{self.folder}; call fill() first")
        return CachedText(self.store, keys, self.pooled)


class CachedText:
    """Row i -> float16 tensor: (L_i, D) hidden states, or (D,) when the cache holds vectors."""

    def __init__(self, store: HiddenStore, keys: list[bytes], pooled: bool):
        self.store = store
        self.keys = keys
        self.pooled = pooled
        self.item_key = "text_vector" if pooled else "hidden"

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> torch.Tensor:
        # A copy: the memory map is read-only, and a batch must not alias it.
        rows = torch.from_numpy(np.array(self.store.get(self.keys[i])))
        return rows[0] if self.pooled else rows


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
