"""On-disk cache of generated samples, keyed by (tokenizer, task + parameters, length, seed, depth).

Sizing a 128k-token prompt takes a dozen tokenizations; sweeps re-use the same samples for every
method, so each is generated once per tokenizer. Location: ``$LONGREACH_CACHE/samples`` (default
``~/.cache/longreach/samples``); entries are small JSON files written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from pathlib import Path
from typing import Any

from ..models import cache_dir
from . import haystack
from .task import PROMPT_FORMAT, Sample, Task

log = logging.getLogger("longreach")

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


def sample_key(task: Task, tokenizer: Any, length: int, seed: int, depth: float | None,
               answer_tokens: int | None = None) -> str:
    params = task.params()
    source = params.get("haystack")
    own = getattr(task, "haystack_fingerprint", None)  # a task with haystacks of its own (qa-mix's kinds)
    hay = own() if own is not None else (
        haystack.fingerprint(source) if isinstance(source, str) and source != "needles" else None)
    key = [FORMAT_VERSION, tokenizer_fingerprint(tokenizer), PROMPT_FORMAT.get(), task.name, task.version, params, hay,
           length, seed, depth]
    if answer_tokens is not None:  # a prompt sized for another answer budget (entries without it stay valid)
        key.append(answer_tokens)
    data = getattr(task, "data_fingerprint", None)
    if data is not None:  # a task reading a user's file (dataset): an edited file is not served from the cache
        key.append(data())
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_sample(task: Task, tokenizer: Any, length: int, seed: int, depth: float | None,
                  root: Path | None = None, answer_tokens: int | None = None) -> Sample:
    """``task.generate(...)``, read from / written to the cache."""
    key = sample_key(task, tokenizer, length, seed, depth, answer_tokens)
    folder = (root or cache_dir() / "samples") / key[:2]
    path = folder / f"{key}.json"
    if path.exists():
        try:
            return Sample.from_dict(json.loads(path.read_bytes().decode("utf-8")))
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
            pass  # a damaged or unreadable entry is regenerated
    sample = task.generate(tokenizer, length, seed, depth) if answer_tokens is None else \
        task.generate(tokenizer, length, seed, depth, answer_tokens=answer_tokens)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(json.dumps(sample.as_dict(), ensure_ascii=True).encode("ascii"))
        os.replace(tmp, path)
    except OSError as exc:  # a full or read-only cache only costs the next run the generation again
        log.warning("cannot cache a sample in %s (%s); going on without", folder, exc.strerror)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return sample
