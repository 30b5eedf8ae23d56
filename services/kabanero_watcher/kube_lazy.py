"""kubernetes_asyncio without its generated package indexes: names are imported when first used.

``kubernetes_asyncio/client/__init__.py`` imports every generated API class and every model (about
1,100 modules, ~25 MiB of the watcher's resident memory), although the watcher talks to four APIs
and reads raw JSON. :func:`install` registers the four package indexes (``kubernetes_asyncio``,
``.client``, ``.client.api``, ``.client.models``) as modules whose attributes are resolved on first
access, from the same ``from <module> import <name>`` lines the real ``__init__`` files hold; every
other module of the library is the library's own, imported normally. Names stay where the library
puts them (``client.CoreV1Api``, ``client.models.V1Namespace``), so nothing else changes.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import types
from pathlib import Path

ROOT = "kubernetes_asyncio"
PACKAGES = (ROOT, f"{ROOT}.client", f"{ROOT}.client.api", f"{ROOT}.client.models")

_FROM_IMPORT = re.compile(r"^from\s+([\w.]+)\s+import\s+(\w+)\s*(?:#.*)?$", re.MULTILINE)
_IMPORT_AS = re.compile(r"^import\s+([\w.]+)\s+as\s+(\w+)\s*(?:#.*)?$", re.MULTILINE)
_VERSION = re.compile(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)


def install() -> bool:
    """Register the lazy package indexes unless the library is imported already; True if installed."""
    if ROOT in sys.modules:
        return False
    spec = importlib.util.find_spec(ROOT)
    if spec is None or not spec.submodule_search_locations:
        return False
    base = Path(next(iter(spec.submodule_search_locations)))
    modules = [_lazy_package(name, base.joinpath(*name.split(".")[1:])) for name in PACKAGES]
    for module in modules:
        sys.modules[module.__name__] = module
    return True


def _lazy_package(name: str, directory: Path) -> types.ModuleType:
    init = directory / "__init__.py"
    source = init.read_text(encoding="utf-8")
    names: dict[str, tuple[str, str | None]] = {
        attr: (module, attr) for module, attr in _FROM_IMPORT.findall(source) if module != "__future__"
    }
    names.update({alias: (module, None) for module, alias in _IMPORT_AS.findall(source)})
    module = types.ModuleType(name)
    module.__file__ = str(init)
    module.__path__ = [str(directory)]
    module.__package__ = name
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=str(init), is_package=True)
    module.__spec__.submodule_search_locations = [str(directory)]
    if (version := _VERSION.search(source)) is not None:
        module.__version__ = version.group(1)  # type: ignore[attr-defined]

    def __getattr__(attr: str) -> object:
        try:
            source_module, source_name = names[attr]
        except KeyError:
            # A submodule not listed in the index (``client.exceptions``): import it by name.
            try:
                value: object = importlib.import_module(f"{name}.{attr}")
            except ModuleNotFoundError as exc:
                raise AttributeError(f"module {name!r} has no attribute {attr!r}") from exc
        else:
            imported = importlib.import_module(source_module)
            value = imported if source_name is None else getattr(imported, source_name)
        setattr(module, attr, value)
        return value

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module
