"""The FastAPI application: the seed's routes, OpenAI's audio routes, the page, /health.

:func:`create_app` takes a loaded :class:`~whispertune.api.Model` (``whispertune serve`` loads
it once) so that a test or another program can serve a model it already holds.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from whispertune import __version__
from whispertune.api import Model
from whispertune.serve import openai, seed
from whispertune.serve.http import Gate, error_body, error_response
from whispertune.serve.options import ServeOptions
from whispertune.serve.service import Recognizer

logger = logging.getLogger(__name__)

DESCRIPTION = """\
One loaded Whisper model behind two APIs:

* **The seed's** (Whisper-Finetune's `infer_server.py`): `POST /recognition` and
  `POST /recognition_stream` (each segment's JSON followed by `\\0`, sent as decoded).
* **OpenAI's audio API**: `POST /v1/audio/transcriptions`, `POST /v1/audio/translations`,
  `GET /v1/models`; point the official client at `http://HOST:PORT/v1`.

Concurrent requests share decodes: the speech spans of requests that arrive together are
decoded in one batch. `GET /` is a page to upload or record audio. With `--api-key`, every
route but `/health`, the page and these docs needs `Authorization: Bearer <key>`.
"""


def _page() -> str:
    return files("whispertune.serve").joinpath("static/index.html").read_text("utf-8")


def create_app(model: Model, options: ServeOptions | None = None) -> FastAPI:
    """The server for ``model`` with ``options``' limits and decode defaults (the model's
    own load options are not read: it is already loaded)."""
    options = options or ServeOptions()
    recognizer = Recognizer(model, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tmp = Path(tempfile.mkdtemp(prefix="whispertune-serve-"))
        app.state.tmp_dir = tmp
        try:
            yield
        finally:
            recognizer.close()
            shutil.rmtree(tmp, ignore_errors=True)

    app = _fastapi(title="whispertune server", version=__version__, description=DESCRIPTION,
                   lifespan=lifespan)
    app.state.recognizer = recognizer
    app.state.options = options
    app.include_router(seed.router)
    app.include_router(openai.router)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page())

    @app.get("/health", summary="Liveness, the model, the queue and the batches so far")
    async def health(request: Request) -> dict[str, Any]:
        return request.app.state.recognizer.health()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(request.url.path, exc.status_code, str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        message, param = _validation_message(exc)
        request.state.status = 400
        return JSONResponse(error_body(request.url.path, 400, message, param), 400)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        logger.exception("%s %s failed", request.method, request.url.path)
        return error_response(request.url.path, 500, "internal server error (see the log)")

    app.add_middleware(
        Gate,
        recognizer=recognizer,
        api_key=options.resolved_api_key(),
        max_upload_bytes=int(options.max_upload_mb * 1e6),
    )
    return app


DOCS_ASSETS = "/docs-assets"


def _fastapi(**kwargs: Any) -> FastAPI:
    """FastAPI with /docs and /redoc served by the server itself (fastapi-offline, in the serve
    extra): FastAPI's default pages load Swagger UI and ReDoc from a CDN, so on a machine
    without internet access (where models are often served) they were blank."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kwargs)
    return FastAPIOffline(static_url=DOCS_ASSETS, **kwargs)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """FastAPI's validation errors as one sentence, naming the fields (OpenAI and the seed
    answer 400 for a missing or malformed field; FastAPI's default is a 422 list)."""
    parts = []
    param = None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query")]
        name = ".".join(loc) or "body"
        param = param or name
        if err.get("type") == "missing":
            parts.append(f"missing field '{name}'")
        else:
            parts.append(f"field '{name}': {err.get('msg', 'invalid')}")
    return "bad request: " + "; ".join(parts), param


__all__ = ["HTTPException", "create_app"]
