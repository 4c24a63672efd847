"""Built-in tasks, one file per family, registered by name on import (every module here is imported).

Adding a task: a ``@register_task``-ed dataclass deriving from :class:`longreach.bench.task.Task` with a
``_generate`` and a ``score``; the generic generator and scorer tests pick it up.
"""

from __future__ import annotations

import importlib
import pkgutil

for _mod in sorted(pkgutil.walk_packages(__path__, __name__ + "."), key=lambda m: m.name):
    importlib.import_module(_mod.name)
