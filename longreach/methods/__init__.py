"""Built-in methods, one file each, registered by name on import.

Layout by slot: ``rope/`` (position remapping), ``attention/`` (attention functions), ``cache/``
(KV-cache factories), ``readers/`` (document readers). Every module below this package is imported
automatically, so adding a method is: write its file with a ``@register``-ed dataclass (docstring
with its paper and parameters), add one README line; the all-methods test matrix picks it up.
"""

from __future__ import annotations

import importlib
import pkgutil

for _mod in sorted(pkgutil.walk_packages(__path__, __name__ + "."), key=lambda m: m.name):
    importlib.import_module(_mod.name)
