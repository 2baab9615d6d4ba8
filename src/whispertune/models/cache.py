"""Where whispertune keeps what it derives once: joined built-in weights, converted checkpoints.

``WHISPERTUNE_CACHE`` overrides the location (tests point it at a temporary folder); otherwise
``$XDG_CACHE_HOME/whispertune`` or ``~/.cache/whispertune``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("WHISPERTUNE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "whispertune"


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
