"""The model-kind registry: one module per kind in this package, each defining `KIND` (a `ModelKind`).

Kinds are found by listing this package, so adding a kind touches only its own module. Commands ask
the registry: `for_run(run_dir)` (from the run's config.json format), `for_artifact(artifact)`, `get(name)`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from toolkit.kinds.base import Capabilities, ExportSpec, KindError, ModelKind

__all__ = ["Capabilities", "ExportSpec", "KindError", "ModelKind", "for_artifact", "for_run", "get", "names"]


@cache
def _registry() -> dict[str, ModelKind]:
    kinds = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        kind = importlib.import_module(f"{__name__}.{info.name}").KIND
        kinds[kind.name] = kind
    return kinds


def names() -> list[str]:
    return sorted(_registry())


def get(name: str) -> ModelKind:
    try:
        return _registry()[name]
    except KeyError:
        raise KindError(f"unknown model kind {name!r} (known: {', '.join(names())})") from None


def for_artifact(artifact) -> ModelKind:
    return get(artifact.kind)


def for_run(run_dir: str | Path) -> ModelKind:
    """The kind whose run format matches `run_dir/config.json` (same name before '@'; the kind checks the version)."""
    from toolkit.io import read_json

    cfg = Path(run_dir) / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.json: not a run directory ('toolkit train ...' writes one)")
    config = read_json(cfg)
    fmt = str(config.get("format", "")) if isinstance(config, dict) else ""
    for kind in _registry().values():
        if fmt.split("@")[0] == kind.run_format.split("@")[0]:
            return kind
    raise KindError(f"{cfg}: unknown run format {fmt!r} (known kinds: {', '.join(names())})")
