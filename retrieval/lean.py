"""Query embedding without the framework around the model: one text, one BERT-family encoder, a few kernels.

A query is embedded alone (a batch of one, padded to a length bucket), where the generic pipeline costs the most:
transformers' BERT runs ~25 Python modules per layer, builds an attention mask for a batch that has no padding and
so takes scaled-dot-product attention's slow "math" path, and calls three projections where one would do. This
module computes the same function directly from the model's weights: embeddings, then per layer one fused QKV
projection, flash attention, the output projection, a GELU fused into the intermediate projection (oneDNN
post-op), the output projection and the two layer norms; then the model's pooling and L2 normalisation.

Measured on this machine (one thread, the bench's 160 latency queries, all-MiniLM-L6-v2 in bf16): 4.7 ms per query
instead of 6.7 ms with packed linears through sentence-transformers, vectors within 5e-5 in cosine (bf16
rounding). Used only when the model is a plain BERT with mean or CLS pooling, and only after a probe agreed with
the model's own pipeline; anything else keeps that pipeline. Imported only where torch is already loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LENGTH_BUCKETS", "LeanEncoder", "lean_encoder_for", "padded_length"]

logger = logging.getLogger(__name__)

PROBE_TEXTS = (
    "where is the OAuth token validated",
    "def parse_header(value: str) -> dict:\n    \"\"\"Split a Content-Type header into its value and params.\"\"\"",
    "Traceback (most recent call last): KeyError in Session.merge when the cache is empty " * 8,
)
PROBE_MIN_COSINE = 0.9995  # bf16 rounding moves a vector by ~5e-5; a wrong layer or pooling moves it by > 0.01
_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}  # transformers' name -> oneDNN/torch
# Token lengths a query is padded up to (then capped at the model's positions). oneDNN sets up and keeps kernels per
# input shape: every new length cost ~2.5 ms more CPU the first time (+25%) and ~2.2 MB for good (all 126 lengths of
# a 128-token window: +274 MB RSS, a warm daemon growing with every new query length). Twelve shapes up to 128
# tokens bound both (~26 MB, warmed at start); a padded query costs what its bucket's length costs (the mask is
# free: 30 tokens padded to 32 took 6.17 ms, 32 unpadded 5.96 ms), at most +25% over its own length past 16 tokens.
LENGTH_BUCKETS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512)


def padded_length(n: int, max_positions: int) -> int:
    """The bucket a sequence of ``n`` tokens is padded to (``n`` itself past the last bucket)."""
    for b in LENGTH_BUCKETS:
        if b >= n:
            return max(n, min(b, max_positions))
    return n


class _Layer:
    __slots__ = ("qkv", "attn_out", "ln1", "inter", "out", "ln2")


class LeanEncoder:
    """A BERT encoder's forward pass for one token sequence, on weights taken from a loaded ``BertModel``.

    ``packed=True`` (bf16 weights, a torch with oneDNN) reorders each projection once for oneDNN and fuses the GELU
    into it; otherwise plain ``F.linear`` in the weights' dtype.
    """

    def __init__(self, bert, pooling: str, normalize: bool, packed: bool) -> None:
        cfg = bert.config
        self.heads = int(cfg.num_attention_heads)
        self.hidden = int(cfg.hidden_size)
        self.head_dim = self.hidden // self.heads
        self.eps = float(cfg.layer_norm_eps)
        self.gelu = _GELU[cfg.hidden_act]
        self.pooling = pooling
        self.normalize = normalize
        self.packed = packed
        emb = bert.embeddings
        self.max_positions = int(emb.position_embeddings.weight.shape[0])
        self.word = emb.word_embeddings.weight.detach()
        self.pos = emb.position_embeddings.weight.detach()
        self.type0 = emb.token_type_embeddings.weight.detach()[0]
        self.emb_ln = _ln(emb.LayerNorm)
        self.layers = []
        for block in bert.encoder.layer:
            att = block.attention.self
            layer = _Layer()
            layer.qkv = self._proj(torch.cat([att.query.weight, att.key.weight, att.value.weight]),
                                   torch.cat([att.query.bias, att.key.bias, att.value.bias]))
            layer.attn_out = self._proj(block.attention.output.dense.weight, block.attention.output.dense.bias)
            layer.ln1 = _ln(block.attention.output.LayerNorm)
            layer.inter = self._proj(block.intermediate.dense.weight, block.intermediate.dense.bias)
            layer.out = self._proj(block.output.dense.weight, block.output.dense.bias)
            layer.ln2 = _ln(block.output.LayerNorm)
            self.layers.append(layer)

    def _proj(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
        if self.packed:
            weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        return weight, bias

    def _linear(self, x: torch.Tensor, proj, gelu: bool = False) -> torch.Tensor:
        if self.packed:
            if gelu:
                return torch.ops.mkldnn._linear_pointwise(x, proj[0], proj[1], "gelu", [], self.gelu)
            return torch.ops.mkldnn._linear_pointwise(x, proj[0], proj[1], "none", [], "")
        y = F.linear(x, proj[0], proj[1])
        return F.gelu(y, approximate=self.gelu) if gelu else y

    def embed_ids(self, ids: Sequence[int], pad: bool = True) -> np.ndarray:
        """The pooled (and, like the model, normalised) float32 vector of one token sequence, special tokens
        included. At most the model's position count of tokens.

        ``pad``: run it at the length of its bucket (:data:`LENGTH_BUCKETS`), the padding masked out of attention
        and pooling, so the same few kernel shapes serve every query (the vector is the unpadded one, within bf16
        rounding)."""
        n, d, h, hd = len(ids), self.hidden, self.heads, self.head_dim
        if not 0 < n <= self.max_positions:
            raise ValueError(f"a sequence of {n} tokens; this model takes 1 to {self.max_positions}")
        m = padded_length(n, self.max_positions) if pad else n
        with torch.inference_mode():
            x = self.word[torch.tensor([*ids, *([0] * (m - n))])] + self.pos[:m] + self.type0
            x = F.layer_norm(x, (d,), *self.emb_ln, self.eps)
            mask = None if m == n else (torch.arange(m) < n).view(1, 1, 1, m)  # keys: the real tokens only
            for layer in self.layers:
                q, k, v = self._linear(x, layer.qkv).view(1, m, 3, h, hd).permute(2, 0, 3, 1, 4)
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[0].transpose(0, 1).reshape(m, d)
                x = F.layer_norm(self._linear(ctx, layer.attn_out) + x, (d,), *layer.ln1, self.eps)
                x = F.layer_norm(self._linear(self._linear(x, layer.inter, gelu=True), layer.out) + x, (d,),
                                 *layer.ln2, self.eps)
            vec = (x[:n].float().mean(0) if self.pooling == "mean" else x[0].float()).numpy()
        if self.normalize:
            vec = vec / (np.linalg.norm(vec) or 1.0)
        return vec.astype(np.float32)


def _ln(module) -> tuple[torch.Tensor, torch.Tensor]:
    return module.weight.detach(), module.bias.detach()


def _why_unsupported(st_model) -> str | None:
    """None if ``st_model`` (a SentenceTransformer) is a plain BERT + mean/CLS pooling (+ normalize) pipeline."""
    mods = list(st_model)
    names = [type(m).__name__ for m in mods]
    if not (2 <= len(mods) <= 3 and names[0] == "Transformer" and names[1] == "Pooling"
            and (len(mods) == 2 or names[2] == "Normalize")):
        return f"modules {names} (only Transformer, Pooling[, Normalize])"
    bert = getattr(mods[0], "auto_model", None)
    cfg = getattr(bert, "config", None)
    if cfg is None or cfg.model_type != "bert" or type(bert).__name__ != "BertModel":
        return f"model type {getattr(cfg, 'model_type', None)!r} (only BERT)"
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute" or getattr(cfg, "is_decoder", False):
        return "relative positions or a decoder"
    if cfg.hidden_act not in _GELU or cfg.hidden_size % cfg.num_attention_heads:
        return f"activation {cfg.hidden_act!r}"
    if getattr(mods[1], "pooling_mode", None) not in ("mean", "cls"):
        return f"pooling {getattr(mods[1], 'pooling_mode', None)!r} (only mean or cls)"
    if getattr(mods[0], "do_lower_case", False):
        return "the module lowercases its input"
    return None


def lean_encoder_for(st_model, tokenizer, max_tokens: int, reference) -> LeanEncoder | None:
    """A :class:`LeanEncoder` for a loaded SentenceTransformer, or None (logged) where it does not apply or its
    probe vectors disagree with ``reference(texts)`` (the model's own pipeline, unit float32 rows).

    Must run before the model's linears are replaced by packed ones (it reads their weights).
    """
    why = _why_unsupported(st_model)
    if why is not None:
        logger.info("query embedding keeps the model's own pipeline: %s", why)
        return None
    bert = st_model[0].auto_model
    dtype = bert.embeddings.word_embeddings.weight.dtype
    packed = dtype == torch.bfloat16 and torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight")
    try:
        enc = LeanEncoder(bert, st_model[1].pooling_mode, len(list(st_model)) == 3, packed)
        if max_tokens > enc.max_positions:
            logger.info("query embedding keeps the model's own pipeline: %d tokens asked, the model has %d positions",
                        max_tokens, enc.max_positions)
            return None
        ids = [token_ids(tokenizer, t, max_tokens) for t in PROBE_TEXTS]
        ours = np.stack([enc.embed_ids(i) for i in ids])
        theirs = reference(list(PROBE_TEXTS))
    except (RuntimeError, AttributeError, KeyError, TypeError, ValueError) as exc:  # a torch or model this was not written for
        logger.info("query embedding keeps the model's own pipeline: %s", exc)
        return None
    cos = float(np.min(np.sum(_unit(ours) * _unit(theirs), axis=1)))
    if cos < PROBE_MIN_COSINE:
        logger.warning("lean query embedding disagrees with the model (cosine %.5f); keeping its own pipeline", cos)
        return None
    return enc


def token_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    """``text``'s ids with the model's special tokens, truncated to ``max_tokens`` like the model's own pipeline."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return with_special_tokens(tokenizer, ids[: max_tokens - 2])


def with_special_tokens(tokenizer, ids: Sequence[int]) -> list[int]:
    return [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
