"""``whispertune serve``: a recognition server over one loaded model.

The seed's API (``/recognition``, ``/recognition_stream``), OpenAI's audio API
(``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/v1/models``), a page at ``/`` and
``/health``, with concurrent requests batched together (:mod:`whispertune.serve.batcher`).
FastAPI and uvicorn come with the ``serve`` extra (``pip install "whispertune[serve]"``);
importing this package does not import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from whispertune.serve.options import ServeOptions

if TYPE_CHECKING:
    from fastapi import FastAPI

    from whispertune.api import Model

__all__ = ["ServeOptions", "create_app"]


def create_app(model: Model, options: ServeOptions | None = None) -> FastAPI:
    """See :func:`whispertune.serve.app.create_app` (imported here on first use)."""
    from whispertune.serve.app import create_app as _create_app

    return _create_app(model, options)
