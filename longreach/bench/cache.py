"""On-disk cache of generated samples, keyed by (tokenizer, task + parameters, length, seed, depth).

Sizing a 128k-token prompt takes a dozen tokenizations; sweeps re-use the same samples for every
method, so each is generated once per tokenizer. Location: ``$LONGREACH_CACHE/samples`` (default
``~/.cache/longreach/samples``); entries are small JSON files written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

from ..models import cache_dir
from . import haystack
from .task import PROMPT_FORMAT, Sample, Task

#: Bump when prompt building or sizing changes, so that old cached samples are not reused.
FORMAT_VERSION = 1

_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of everything in a tokenizer that changes token counts: vocabulary, merges, template, BOS."""
    try:
        return _FINGERPRINTS[tokenizer]
    except (KeyError, TypeError):
        pass
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for attr in ("chat_template", "add_bos_token", "bos_token", "eos_token"):
        h.update(repr(getattr(tokenizer, attr, None)).encode())
    fp = h.hexdigest()[:24]
    try:
        _FINGERPRINTS[tokenizer] = fp
    except TypeError:
        pass
    return fp


def sample_key(task: Task, tokenizer: Any, length: int, seed: int, depth: float | None) -> str:
    params = task.params()
    source = params.get("haystack")
    hay = haystack.fingerprint(source) if isinstance(source, str) and source != "needles" else None
    blob = json.dumps([FORMAT_VERSION, tokenizer_fingerprint(tokenizer), PROMPT_FORMAT.get(), task.name, task.version, params, hay,
                       length, seed, depth], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_sample(task: Task, tokenizer: Any, length: int, seed: int, depth: float | None,
                  root: Path | None = None) -> Sample:
    """``task.generate(...)``, read from / written to the cache."""
    key = sample_key(task, tokenizer, length, seed, depth)
    folder = (root or cache_dir() / "samples") / key[:2]
    path = folder / f"{key}.json"
    if path.exists():
        try:
            return Sample.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            pass  # a damaged entry is regenerated
    sample = task.generate(tokenizer, length, seed, depth)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(sample.as_dict(), ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return sample
