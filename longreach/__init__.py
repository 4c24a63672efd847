"""longreach: make an off-the-shelf language model read, remember and be measured far beyond its
trained context window, without retraining.

Python API::

    import longreach
    lm = longreach.load_model("smollm2-135m")
    a = longreach.ask("long.txt", "What is the pass key?", model=lm, method="none")
    print(a.answer, a.input_tokens, a.peak_memory_bytes)

    engine = longreach.Engine.for_model(lm)           # every request on a model runs through its engine
    result = engine.run("yarn:factor=4", longreach.Request(text, "What is the pass key?"))
"""

from __future__ import annotations

__version__ = "0.1.0"

from .ask import Answer, ask
from .context import ContextWindow
from .engine import Engine
from .errors import LongreachError
from .models import KNOWN_MODELS, LoadedModel, ModelInfo, load_model
from .readers import ReadResult, Request
from .spec import REGISTRY, Method, Plan, method_names, parse_spec, register

__all__ = [
    "Answer",
    "ContextWindow",
    "Engine",
    "KNOWN_MODELS",
    "LoadedModel",
    "LongreachError",
    "Method",
    "ModelInfo",
    "Plan",
    "REGISTRY",
    "ReadResult",
    "Request",
    "ask",
    "load_model",
    "method_names",
    "parse_spec",
    "register",
]
