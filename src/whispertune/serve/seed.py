"""The seed's API (Whisper-Finetune's ``infer_server.py``), with its bugs fixed.

Same routes, fields and response bodies, so its clients and page keep working:
``POST /recognition`` answers ``{"results": [{"result", "start", "end"}], "code": 0}`` and
``POST /recognition_stream`` sends each segment's JSON followed by a ``\\0`` byte as soon as it
is decoded. What differs: errors are ``{"code": <non-zero>, "msg"}`` with a real 4xx/5xx
status (the seed answers code 0 or a bare 500), ``language`` defaults to detection (the seed's
``"None"`` still means that), decoding uses the server's options (the seed hard-codes beam 10)
and never blocks other requests.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from whispertune.errors import UserError
from whispertune.serve.http import (
    CLIENT_CLOSED,
    classify,
    collect,
    error_body,
    error_responses,
    finish,
    open_run,
)
from whispertune.text import to_simplified
from whispertune.transcribe import Segment

router = APIRouter(tags=["seed API (Whisper-Finetune)"])

AUTO = ("", "auto", "none", "null")


class SeedSegment(BaseModel):
    result: str = Field(description="the segment's text")
    start: float = Field(description="start in seconds, 2 decimals")
    end: float = Field(description="end in seconds, 2 decimals")


class SeedResponse(BaseModel):
    results: list[SeedSegment]
    code: int = Field(0, description="0; errors answer {code: <HTTP status>, msg} instead")


class SeedError(BaseModel):
    code: int = Field(description="non-zero: the HTTP status")
    msg: str


AudioField = Annotated[UploadFile, File(description="the audio or video file (any format "
                                                    "FFmpeg reads, any length)")]
ToSimple = Annotated[int, Form(description="1: write Chinese in simplified characters")]
RemovePun = Annotated[int, Form(description="1: remove punctuation from the text")]
Language = Annotated[str | None, Form(description="language code or name (zh, en, "
                                                  "Chinese...); 'auto' or 'None': detect it "
                                                  "from the audio; default: the server's "
                                                  "--language (detect)")]
Task = Annotated[str, Form(description="transcribe, or translate to English")]

ERRORS = error_responses(SeedError)


def _overrides(language: str | None, task: str) -> dict[str, Any]:
    if task not in ("transcribe", "translate"):
        raise UserError(f"task must be 'transcribe' or 'translate', not {task!r}")
    out: dict[str, Any] = {"task": task}
    if language is not None:  # absent: the server's --language
        out["language"] = None if language.strip().lower() in AUTO else language.strip()
    return out


def _strip_punctuation(text: str) -> str:
    kept = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def seed_segment(seg: Segment, to_simple: int, remove_pun: int) -> dict[str, Any]:
    text = seg.text
    if to_simple:
        text = to_simplified(text)
    if remove_pun:
        text = _strip_punctuation(text)
    return {"result": text, "start": round(seg.start, 2), "end": round(seg.end, 2)}


def _error(request: Request, error: BaseException) -> Response:
    status, message = classify(error)
    request.state.status = status
    if status == CLIENT_CLOSED:
        return Response(status_code=status)
    return JSONResponse(error_body(request.url.path, status, message), status)


@router.post("/recognition", response_model=SeedResponse, responses=ERRORS,
             summary="Transcribe a file (the seed's contract)")
async def recognition(
    request: Request,
    audio: AudioField,
    to_simple: ToSimple = 1,
    remove_pun: RemovePun = 0,
    language: Language = None,
    task: Task = "transcribe",
) -> Any:
    """All segments at once: `{"results": [{"result", "start", "end"}], "code": 0}`."""
    try:
        run = await open_run(request, audio, **_overrides(language, task))
    except Exception as e:
        return _error(request, e)
    try:
        segments = await collect(request, run)
    except Exception as e:
        return _error(request, e)
    finally:
        finish(run)
    return {"results": [seed_segment(s, to_simple, remove_pun) for s in segments], "code": 0}


@router.post(
    "/recognition_stream",
    responses={**ERRORS, 200: {"content": {"application/octet-stream": {}},
                               "description": "segment JSON objects, each followed by \\0"}},
    summary="Transcribe a file, each segment sent as it is decoded",
)
async def recognition_stream(
    request: Request,
    audio: AudioField,
    to_simple: ToSimple = 1,
    remove_pun: RemovePun = 0,
    language: Language = None,
    task: Task = "transcribe",
) -> Response:
    """A chunked body: each segment as `{"result", "start", "end"}` followed by one `\\0`
    byte, flushed as soon as it is decoded. Errors before the first segment answer a status
    and `{"code", "msg"}`; an error later ends the stream with a `{"code", "msg"}` frame."""
    try:
        run = await open_run(request, audio, **_overrides(language, task))
    except Exception as e:
        return _error(request, e)

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for seg in run.segments():
                data = seed_segment(seg, to_simple, remove_pun)
                yield json.dumps(data, ensure_ascii=False).encode() + b"\0"
        except Exception as e:
            status, message = classify(e)
            request.state.status = status
            request.state.note = "failed while streaming"
            yield json.dumps({"code": status, "msg": message}).encode() + b"\0"
        except BaseException:  # the client went away: the response is being cancelled
            request.state.status = CLIENT_CLOSED
            raise
        finally:
            finish(run)

    return StreamingResponse(frames(), media_type="application/octet-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
