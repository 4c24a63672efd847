"""``icv``: in-context vectors: the demonstrations become a steering vector added to the residual stream."""

from __future__ import annotations

import math
from typing import Any

from ...spec import Method, register


@register
class Icv(Method):
    """ICV: answer without the demonstrations, steered by a vector computed from them.

    Paper: "In-context Vectors: Making In Context Learning More Effective and Controllable Through Latent
    Space Steering", Liu et al. 2023, https://arxiv.org/abs/2311.06668. The document's demonstration pairs
    (x_i, y_i) are read one by one; each decoder layer's output at the last token of x_i and of x_i + y_i
    differ by d_i; per layer the first principal direction of the d_i (scaled by the mean difference's
    projection on it) is the in-context vector v_l. The answer is decoded with ``strength * v_l`` added to
    every chosen layer's output at every position, each hidden state then rescaled to its norm (forward
    hooks, removed after the request). The vector is cached in memory per document, model and plan.
    Layouts: "Sentence:/Input: ..." + "Label: ..." lines (many-label-icl), or "x => y" lines; the rest of
    the document (e.g. the label list) stays in the prompt. See docs/icl-methods.md.

    Parameters:
      strength  lambda, the multiple of v_l added (hidden-state units; 1 = the typical shift a label
                makes), default 0.1; 0 = no steering (a control), negative = steer away.
      demos     demonstrations kept in the prompt as well (the most relevant to the question), default 0.
      layers    the steered layers: all (default), N, or A-B (0-based, inclusive).
      pairs     pairs that compute the vector: 0 = all (default), N = the first N.
      fallback  a document without demonstration pairs is read plainly (true, default; extra notes 0 pairs)
                or refused in one line (false).
    """

    name = "icv"
    slot = "reader"
    paper = ("In-context Vectors: Making In Context Learning More Effective and Controllable Through Latent "
             "Space Steering (arXiv 2311.06668)")
    summary = "steer with a vector computed from the demonstrations instead of showing them (in-context vector)"

    strength: float = 0.1
    demos: int = 0
    layers: str = "all"
    pairs: int = 0
    fallback: bool = True

    def __post_init__(self) -> None:
        from ...readers.icv import parse_layers

        if not math.isfinite(self.strength) or abs(self.strength) > 100:
            raise ValueError(f"strength={self.strength:g} must be within -100..100 (default 0.1)")
        if self.demos < 0:
            raise ValueError(f"demos={self.demos} must be 0 (none in the prompt, default) or more")
        if self.pairs < 0:
            raise ValueError(f"pairs={self.pairs} must be 0 (every pair, default) or more")
        parse_layers(self.layers)

    def check(self, info: Any) -> None:
        from ...readers.icv import resolve_layers

        resolve_layers(self.layers, info.layers)

    def modifies_model(self, info: Any) -> bool:
        return True  # forward hooks on the decoder layers while it answers (exclusive session)

    def make_reader(self) -> Any:
        from ...readers.icv import IcvReader

        return IcvReader(self.strength, self.demos, self.layers, self.pairs, self.fallback)
