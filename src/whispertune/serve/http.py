"""What the routes share: error bodies in each API's shape, the gate every request passes
(key, queue, upload size, the log line), and an upload turned into a running transcription.

Why a pure ASGI gate and not FastAPI dependencies: FastAPI reads and parses a multipart body
before any dependency runs, so a key, a full queue or a size limit checked there would be
checked only after the whole upload arrived. The gate sees the request first, and counts the
body's bytes as the form parser pulls them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse

from whispertune.audio import AudioError
from whispertune.errors import UserError
from whispertune.progress import Cancelled
from whispertune.serve.service import Recognizer, Run, TooLong

logger = logging.getLogger("whispertune.serve")

# Routes that decode: admitted against --max-queue and logged one line each.
TRANSCRIBE_PATHS = frozenset(
    {"/recognition", "/recognition_stream", "/v1/audio/transcriptions", "/v1/audio/translations"}
)
# Routes anyone may read without the key: nothing in them is the server's or a user's data.
OPEN_PATHS = frozenset({"/health", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                        "/redoc", "/favicon.ico"})
OPEN_PREFIX = "/docs-assets/"  # Swagger UI's own files, served for /docs
CLIENT_CLOSED = 499  # nginx's code for a client that went away; only ever logged
RETRY_AFTER_S = 2

_OPENAI_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_audio"),
    503: ("server_error", "server_overloaded"),
}


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/")


ERROR_STATUSES = {
    400: "bad field, empty/damaged audio, unknown language, audio too long",
    401: "missing or wrong API key",
    413: "upload larger than --max-upload-mb",
    415: "not an audio file",
    503: "queue full (Retry-After)",
}


def error_responses(model: type) -> dict[int | str, dict[str, Any]]:
    """The error statuses every route can answer, for /docs, in the body shape ``model``
    of its API (the seed's or OpenAI's)."""
    return {status: {"model": model, "description": text} for status, text in
            ERROR_STATUSES.items()}


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict:
    """The error in the shape of the route's API: OpenAI's ``{"error": {...}}`` (so the openai
    client raises its typed exceptions) or the seed's ``{"code": <non-zero>, "msg"}``."""
    if is_openai_path(path):
        kind, code = _OPENAI_TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return {"code": status, "msg": message}


def error_response(
    path: str,
    status: int,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, param), status, headers=headers)


def classify(error: BaseException) -> tuple[int, str]:
    """HTTP status and message for an error raised while opening or decoding a request."""
    if isinstance(error, HTTPException):
        return error.status_code, str(error.detail)
    if isinstance(error, AudioError):
        message = str(error)
        damaged = "empty" in message or "decoding failed" in message
        return (400 if damaged else 415), message
    if isinstance(error, Cancelled):
        return CLIENT_CLOSED, "cancelled: the client went away"
    if isinstance(error, (TooLong, UserError)):
        return 400, str(error)
    return 500, "internal error while decoding (see the server log)"


class _TooLarge(Exception):
    pass


class Gate:
    """Pure ASGI middleware in front of the app: API key, admission (503 + Retry-After past
    --max-queue), the upload size limit (413, counted while the body is read) and the
    one-line log of each transcription request."""

    def __init__(self, app: Any, recognizer: Recognizer, api_key: str | None,
                 max_upload_bytes: int) -> None:
        self.app = app
        self.recognizer = recognizer
        self.api_key = api_key
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if (
            self.api_key is not None
            and path not in OPEN_PATHS
            and not path.startswith(OPEN_PREFIX)
            and not self._authorized(scope)
        ):
            await error_response(
                path, 401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )(scope, receive, send)
            return
        if path not in TRANSCRIBE_PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        await self._transcription(scope, receive, send, path)

    def _authorized(self, scope: dict) -> bool:
        assert self.api_key is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value.decode("latin-1")
                scheme, _, token = given.partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    token.strip().encode(), self.api_key.encode()
                )
        return False

    async def _transcription(self, scope: dict, receive: Any, send: Any, path: str) -> None:
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        status = {"code": 0}
        limit = self.max_upload_bytes
        length = _content_length(scope)
        if length is not None and length > limit:
            await error_response(path, 413, _too_large_message(limit))(scope, receive, send)
            self._log(scope, 413, start)
            return
        rec = self.recognizer
        if rec.admitted >= rec.max_queue:
            await error_response(
                path, 503,
                f"the server is busy ({rec.admitted} requests queued, --max-queue "
                f"{rec.max_queue}); retry in {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )(scope, receive, send)
            self._log(scope, 503, start)
            return
        rec.admitted += 1
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes an HTTPException from the body parser through to the
                    # exception handlers; anything else it turns into a 400.
                    raise HTTPException(413, _too_large_message(limit))
            return message

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        finally:
            rec.admitted -= 1
            self._log(scope, state.get("status", status["code"]), start)

    def _log(self, scope: dict, status: int, start: float) -> None:
        state = scope.get("state", {})
        run: Run | None = state.get("run")
        audio = decode = wait = 0.0
        first = ""
        if run is not None:
            if run.info is not None and run.info.duration is not None:
                audio = run.info.duration
            decode, wait = run.stats.decode_seconds, run.stats.queue_seconds
            if run.stats.first_segment is not None and run.stats.started is not None:
                first = f", first segment {run.stats.first_segment - run.stats.started:.2f} s"
        note = state.get("note", "")
        logger.info(
            "%s %s %s audio %.1f s, decode %.2f s, waited %.2f s%s, total %.2f s%s",
            scope["method"], scope["path"], status, audio, decode, wait, first,
            time.perf_counter() - start, f" ({note})" if note else "",
        )


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large_message(limit: int) -> str:
    return f"the upload is larger than this server accepts ({limit / 1e6:g} MB, --max-upload-mb)"


# -- uploads -----------------------------------------------------------------------------------

_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")


async def save_upload(upload: UploadFile, folder: Path) -> Path:
    """The upload in a file of our own naming in the server's temp folder (the client's name
    is used for nothing but a suffix: nothing a client sends names a server-side path)."""
    match = _SUFFIX.search(upload.filename or "")
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=match.group(0) if match else "",
                                dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await upload.read(1 << 20):
                await asyncio.to_thread(out.write, chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        await upload.close()
    return path


async def open_run(request: Request, upload: UploadFile, **overrides: Any) -> Run:
    """Save the upload, start its transcription and wait until its audio was probed.

    Raises the errors :func:`classify` maps to statuses, with the upload already removed.
    """
    recognizer: Recognizer = request.app.state.recognizer
    path = await save_upload(upload, request.app.state.tmp_dir)
    try:
        run = recognizer.start(path, upload.filename or "upload", **overrides)
        request.state.run = run
        await run.opened()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return run


def finish(run: Run) -> None:
    """Stop what is left of a run (a no-op when it ended) and remove its upload. Synchronous:
    it also runs in a streaming response's cancelled ``finally``."""
    run.cancel()
    run.path.unlink(missing_ok=True)


async def collect(request: Request, run: Run) -> list:
    """Every segment of ``run``; a client that disconnects meanwhile cancels the run."""
    task = asyncio.ensure_future(run.result())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                run.cancel()
                raise Cancelled("the client went away", state="partial")
    finally:
        if not task.done():
            task.cancel()


def sse(data: dict) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
