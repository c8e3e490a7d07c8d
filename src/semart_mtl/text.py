"""Description encoder: a Hugging Face encoder whose top layers alone are fine-tuned."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PreTrainedTokenizerFast
from transformers import AttentionInterface
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights cannot be had: no network and nothing local."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or the mirror in HF_ENDPOINT) answers on its port.

    False at once under HF_HUB_OFFLINE=1. Behind a proxy a direct connection proves nothing,
    so the hub clients are left to try.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline() -> None:
    """Make the hub clients use their local cache only, so a missing file fails at once.

    Without this a closed network costs about a minute of retries per file.
    """
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def load_tokenizer(name_or_path: str):
    """Tokenizer of a hub name or local folder, with a clear error when it cannot be had."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise WeightsUnavailable(_offline_message("text model", name_or_path)) from err


def load_text_backbone(name_or_path: str, pretrained: bool) -> nn.Module:
    """An Auto encoder: pretrained weights, or random ones on the model's own config."""
    try:
        if pretrained:
            # float32 whatever the saved dtype: the heads are float32, and autocast decides
            # what runs in half precision on a GPU.
            return AutoModel.from_pretrained(name_or_path, dtype=torch.float32)
        return AutoModel.from_config(AutoConfig.from_pretrained(name_or_path))
    except (OSError, ValueError) as err:
        raise WeightsUnavailable(_offline_message("text model", name_or_path)) from err


def _offline_message(what: str, name: str) -> str:
    if Path(name).is_dir():
        return (f"cannot load the {what} {name!r}: the folder holds no encoder and tokenizer "
                "that transformers can read (save them with save_pretrained), or pass "
                "--text-model scratch.")
    return (
        f"cannot load the {what} {name!r}: it is neither a local folder nor in the Hugging Face "
        "cache, and the hub cannot be reached (no network, or HF_HUB_OFFLINE=1). Without "
        "internet pass --text-model LOCAL_FOLDER (a saved encoder with its tokenizer), "
        "--text-model scratch (an encoder built from the descriptions, random init), or "
        "--modality image."
    )


def build_scratch_text_model(
    descriptions: list[str], out_dir: str | Path, vocab_size: int = 4000
) -> Path:
    """Build a WordPiece tokenizer from `descriptions` and save it with a small BERT config.

    The folder then loads like any local text model (random weights, no download).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = _wordpiece_vocab(descriptions, vocab_size, specials, normalizer, pre_tokenizer)
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )
    fast.save_pretrained(out_dir)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=128, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=256, max_position_embeddings=512,
    )
    config.save_pretrained(out_dir)
    return out_dir


def _wordpiece_vocab(descriptions, size: int, specials, normalizer, pre_tokenizer) -> dict:
    """Specials, every character (alone and as a word piece), then the most frequent words.

    Unlike `tokenizers`' WordPieceTrainer, whose ties depend on hash order, the same
    descriptions always give the same vocabulary, so runs with one seed are repeatable.
    Words outside it are spelled out in characters.
    """
    from collections import Counter

    words = Counter(word for text in descriptions
                    for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    pieces = list(specials) + chars + [f"##{c}" for c in chars]
    known = set(pieces)
    # Most frequent first; equal counts in alphabetical order.
    for word, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])):
        if len(pieces) >= size:
            break
        if word not in known:
            pieces.append(word)
    return {piece: i for i, piece in enumerate(pieces)}


def find_layers(backbone: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (BERT, DistilBERT, RoBERTa, MiniLM...)."""
    n_layers = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"no stack of {n_layers} layers found in {type(backbone).__name__}")


# --- attention over packed rows ----------------------------------------------------------

PACKED_ATTENTION = "semart_packed_rows"


class RowChunks:
    """Where each row's tokens sit once a batch's real tokens are packed end to end.

    Rows are sorted by length and cut into chunks of `chunk_rows`; attention runs chunk by
    chunk, each padded to its own longest row, while every other part of a layer (projections,
    feed-forward, norms, dropout) runs once over the packed tokens, with no padding at all.
    """

    def __init__(self, lengths: list[int], chunk_rows: int, device: torch.device):
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        # Longest first; rows without tokens have nothing to attend to (their mean is 0).
        order = sorted((r for r in range(len(lengths)) if lengths[r]), key=lambda r: -lengths[r])
        gather, mask, real = [], [], []  # every chunk's, end to end
        shapes = []  # (rows, longest, real tokens) of each chunk
        packed_order = []  # packed token positions in the order the chunks put them
        for first in range(0, len(order), chunk_rows):
            rows = order[first:first + chunk_rows]
            longest = lengths[rows[0]]
            shapes.append((len(rows), longest, sum(lengths[r] for r in rows)))
            for j, r in enumerate(rows):
                tokens = list(range(starts[r], starts[r] + lengths[r]))
                # Padding gathers the row's first token; the key mask hides it.
                gather += tokens + [starts[r]] * (longest - lengths[r])
                mask += [True] * lengths[r] + [False] * (longest - lengths[r])
                real += range(j * longest, j * longest + lengths[r])
                packed_order += tokens
        # One transfer per kind of index, not one per chunk; the chunks are views of them.
        gather, mask, real = (torch.tensor(x).to(device) for x in (gather, mask, real))
        padded_sizes = [b * longest for b, longest, _ in shapes]
        self.chunks = [  # (gather, key_mask, real), one per chunk
            (g, m.view(b, 1, 1, longest), r) for g, m, r, (b, longest, _) in zip(
                gather.split(padded_sizes), mask.split(padded_sizes),
                real.split([n for _, _, n in shapes]), shapes)
        ]
        # (N,): from the chunks' concatenated outputs back to packed order
        self.unsort = torch.argsort(torch.tensor(packed_order)).to(device)


def packed_rows_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                          row_chunks: RowChunks | None = None, **kwargs):
    """(1, H, N, d) packed q, k, v -> (1, N, H, d): each row attends to its own tokens only.

    Called with `row_chunks` by `TextEncoder.top`; otherwise (the whole encoder running in
    `frozen_hidden`) it hands over to the encoder's own attention.
    """
    if row_chunks is None:
        # "eager" is no registered function (each model has its own); SDPA computes the same.
        original = ALL_ATTENTION_FUNCTIONS.get_interface(module.config.packed_fallback,
                                                         ALL_ATTENTION_FUNCTIONS["sdpa"])
        return original(module, query, key, value, attention_mask, dropout=dropout,
                        scaling=scaling, **kwargs)
    heads, d = query.shape[1], query.shape[3]
    outputs = []
    for gather, key_mask, real in row_chunks.chunks:
        b, length = key_mask.shape[0], key_mask.shape[-1]

        def padded(x):  # (1, H, N, d) -> (b, H, l, d)
            return x[0].index_select(1, gather).view(heads, b, length, d).transpose(0, 1)

        out = nn.functional.scaled_dot_product_attention(
            padded(query), padded(key), padded(value), attn_mask=key_mask, dropout_p=dropout,
            scale=scaling)
        # (b, H, l, d) -> (real tokens, H, d)
        outputs.append(out.transpose(1, 2).reshape(b * length, heads, d).index_select(0, real))
    return torch.cat(outputs).index_select(0, row_chunks.unsort).unsqueeze(0), None


AttentionInterface.register(PACKED_ATTENTION, packed_rows_attention)


def attention_modules(layer: nn.Module) -> list[nn.Module]:
    """The modules of a transformer layer that dispatch attention on their config."""
    return [m for m in layer.modules() if hasattr(getattr(m, "config", None),
                                                  "_attn_implementation")]


class TextEncoder(nn.Module):
    """(B, L) token ids -> (B, D_txt) mean-pooled description vector.

    The encoder is cut in two: a frozen bottom (embeddings and all but the top
    `trainable_layers` layers), always run in eval mode without gradients, and a trainable
    top. Because the bottom never changes, its output for a description is a pure function
    of the text, which is what makes it cacheable.
    """

    def __init__(self, backbone: nn.Module, trainable_layers: int = 1, chunk_rows: int = 0):
        super().__init__()
        self.backbone = backbone
        self.layers = find_layers(backbone)
        if not 0 <= trainable_layers <= len(self.layers):
            from .config import ConfigError

            raise ConfigError(f"text trainable layers must be in [0, {len(self.layers)}] for "
                              f"this encoder, got {trainable_layers}")
        if chunk_rows < 0:
            raise ValueError(f"chunk_rows must be >= 0 (0: the whole batch), got {chunk_rows}")
        self.trainable_layers = trainable_layers
        self.chunk_rows = chunk_rows
        self.dim = backbone.config.hidden_size
        n_frozen = len(self.layers) - trainable_layers
        for p in backbone.parameters():
            p.requires_grad = False
        for layer in self.layers[n_frozen:]:
            for p in layer.parameters():
                p.requires_grad = True
            if chunk_rows:
                # The trainable layers alone dispatch to the packed-rows attention.
                for module in attention_modules(layer):
                    config = copy.copy(module.config)
                    config.packed_fallback = module.config._attn_implementation
                    config._attn_implementation = PACKED_ATTENTION
                    module.config = config

    def train(self, mode: bool = True):
        super().train(mode)
        # The frozen bottom keeps dropout off, so its output is the same every epoch.
        self.backbone.eval()
        for layer in self.top_layers():
            layer.train(mode)
        return self

    def top_layers(self) -> nn.ModuleList:
        return self.layers[len(self.layers) - self.trainable_layers:]

    @torch.no_grad()
    def frozen_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, D): hidden states entering the first trainable layer."""
        # The whole backbone runs here, the top layers too, their output unused. In eval mode
        # they draw no dropout masks, so a run draws the same random numbers whether the
        # frozen output comes from here or from the text cache.
        modes = [layer.training for layer in self.top_layers()]
        self.top_layers().eval()
        try:
            out = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
            )
        finally:
            for layer, mode in zip(self.top_layers(), modes):
                layer.train(mode)
        # hidden_states[0] are the embeddings, [k] the output of layer k.
        return out.hidden_states[len(self.layers) - self.trainable_layers]

    def top(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, D): run the trainable layers and mean-pool over real tokens.

        With `chunk_rows` the layers run on the batch's real tokens packed end to end, so a
        row costs what its description holds, not the batch's longest (most SemArt
        descriptions are far shorter than their batch's longest: median ~90 of 256 tokens);
        only attention runs on length-sorted chunks of `chunk_rows` rows, each padded to its
        own longest (see `RowChunks`). Rows of a transformer layer are independent, so the
        output is the same up to float rounding; only dropout draws differ.
        """
        if not self.trainable_layers or not self.chunk_rows:
            return self._top_rows(hidden, attention_mask)
        lengths = attention_mask.sum(1)  # (B,)
        # One transfer for all lengths, not one per row.
        chunks = RowChunks(lengths.tolist(), self.chunk_rows, hidden.device)
        packed = hidden[attention_mask.bool()].unsqueeze(0)  # (B, L, D) -> (1, N, D)
        for layer in self.top_layers():
            packed = layer(packed, attention_mask=None, row_chunks=chunks)
        # (1, N, D) -> (B, D): each row's mean over its own tokens
        rows = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
        sums = packed.new_zeros(len(lengths), self.dim).index_add(0, rows, packed[0])
        return sums / lengths.clamp(min=1).unsqueeze(1).to(sums.dtype)

    def _top_rows(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, D): the trainable layers over these rows, then the mean pool."""
        if self.trainable_layers:
            mask = create_bidirectional_mask(
                config=self.backbone.config, inputs_embeds=hidden, attention_mask=attention_mask
            )
            for layer in self.top_layers():
                hidden = layer(hidden, mask)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.top(self.frozen_hidden(input_ids, attention_mask), attention_mask)
