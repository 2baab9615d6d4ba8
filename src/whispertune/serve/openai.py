"""OpenAI's audio API: ``/v1/audio/transcriptions``, ``/v1/audio/translations`` and
``/v1/models``, as the official ``openai`` client calls them.

Why: most tools that speak to a speech server (and speaches' and whisper.cpp's users) use the
OpenAI client; pointing ``openai.OpenAI(base_url="http://127.0.0.1:5000/v1")`` at this server
is then the whole integration. Bodies follow OpenAI's: ``json`` ``{"text"}``, ``text``,
``srt``, ``vtt`` (formats.py's writers, as ``whispertune transcribe`` writes them) and
``verbose_json`` (segments with Whisper's fields, top-level ``words`` when
``timestamp_granularities[]=word``); ``stream=true`` sends server-sent events
``transcript.text.delta`` per segment, then ``transcript.text.done``; errors are
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from whispertune.backends.base import DEFAULT_TEMPERATURES, join_texts
from whispertune.errors import UserError
from whispertune.formats import to_srt, to_vtt
from whispertune.languages import language_name
from whispertune.serve.http import (
    CLIENT_CLOSED,
    classify,
    collect,
    error_body,
    error_responses,
    finish,
    open_run,
    sse,
)
from whispertune.serve.service import Run
from whispertune.transcribe import Segment

router = APIRouter(prefix="/v1", tags=["OpenAI audio API"])

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
CREATED = int(time.time())


class OpenAIError(BaseModel):
    error: dict[str, Any]


ERRORS = error_responses(OpenAIError)

FileField = Annotated[UploadFile, File(description="the audio or video file (any format "
                                                   "FFmpeg reads, any length)")]
ModelField = Annotated[str, Form(description="required by the API; any name is accepted and "
                                             "the server's one model decodes (GET /v1/models)")]
PromptField = Annotated[str | None, Form(description="text that precedes the audio: "
                                                     "spellings, names, style")]
FormatField = Annotated[str, Form(description="json, text, srt, verbose_json or vtt")]
TemperatureField = Annotated[float, Form(description="0 (default): decode greedily/beam, "
                                                     "falling back to sampling on loops; "
                                                     "t > 0: start sampling at t")]
GranularityField = Annotated[
    list[str] | None,
    Form(alias="timestamp_granularities[]",
         description="segment and/or word (verbose_json: top-level words with times)"),
]
StreamField = Annotated[bool, Form(description="send server-sent events: "
                                               "transcript.text.delta per segment, then "
                                               "transcript.text.done")]


def _temperatures(temperature: float) -> list[float] | None:
    if not 0.0 <= temperature <= 1.0:
        raise UserError(f"temperature must be between 0 and 1, got {temperature:g}")
    if temperature == 0.0:
        return None  # the server's fallback schedule
    return [temperature, *[t for t in DEFAULT_TEMPERATURES if t > temperature]]


def _options(task: str, language: str | None, prompt: str | None, response_format: str,
             temperature: float, granularities: list[str] | None) -> dict[str, Any]:
    if response_format not in FORMATS:
        raise UserError(f"response_format must be one of {', '.join(FORMATS)}, "
                        f"not {response_format!r}")
    grains = set(granularities or [])
    unknown = grains - {"word", "segment"}
    if unknown:
        raise UserError(f"timestamp_granularities[] takes word and segment, not "
                        f"{', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"task": task, "word_timestamps": "word" in grains}
    if language:  # absent: the server's --language (detect by default)
        out["language"] = language
    if prompt:
        out["initial_prompt"] = prompt
    temps = _temperatures(temperature)
    if temps is not None:
        out["temperatures"] = temps
    return out


def _verbose(run: Run, segments: list[Segment], task: str, words: bool) -> dict[str, Any]:
    info = run.info
    lang = info.language if info is not None else None
    body: dict[str, Any] = {
        "task": task,
        "language": language_name(lang) if lang else None,
        "duration": round(info.duration or 0.0, 3) if info is not None else 0.0,
        "text": join_texts(s.text for s in segments),
        "segments": [
            {
                "id": i,
                "seek": int(round(s.start * 100)),
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature if s.temperature is not None else 0.0,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for i, s in enumerate(segments)
        ],
    }
    if words:
        body["words"] = [
            {"word": w.word, "start": w.start, "end": w.end}
            for s in segments for w in (s.words or [])
        ]
    return body


def _error(request: Request, error: BaseException) -> Response:
    status, message = classify(error)
    request.state.status = status
    if status == CLIENT_CLOSED:
        return Response(status_code=status)
    return JSONResponse(error_body(request.url.path, status, message), status)


async def _respond(request: Request, task: str, file: UploadFile, language: str | None,
                   prompt: str | None, response_format: str, temperature: float,
                   granularities: list[str] | None, stream: bool) -> Response:
    try:
        options = _options(task, language, prompt, response_format, temperature,
                           granularities)
        run = await open_run(request, file, **options)
    except Exception as e:
        return _error(request, e)
    if stream:
        return StreamingResponse(_events(request, run), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    try:
        segments = await collect(request, run)
    except Exception as e:
        return _error(request, e)
    finally:
        finish(run)
    text = join_texts(s.text for s in segments)
    if response_format == "json":
        return JSONResponse({"text": text})
    if response_format == "text":
        return PlainTextResponse(text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(segments))
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
    return JSONResponse(_verbose(run, segments, task, options["word_timestamps"]))


async def _events(request: Request, run: Run) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` per segment (the text it adds, spaces included, so the
    deltas add up to the final text), then ``transcript.text.done``; an error ends the
    stream with an ``{"error"}`` event, which the openai client raises."""
    texts: list[str] = []
    sent = ""
    try:
        async for seg in run.segments():
            texts.append(seg.text)
            joined = join_texts(texts)
            delta, sent = joined[len(sent):], joined
            if delta:
                yield sse({"type": "transcript.text.delta", "delta": delta})
        yield sse({"type": "transcript.text.done", "text": sent})
    except Exception as e:
        status, message = classify(e)
        request.state.status = status
        request.state.note = "failed while streaming"
        yield sse(error_body(request.url.path, status, message))
    except BaseException:
        request.state.status = CLIENT_CLOSED
        raise
    finally:
        finish(run)


@router.post("/audio/transcriptions", responses=ERRORS,
             summary="Transcribe audio (OpenAI's API)")
async def transcriptions(
    request: Request,
    file: FileField,
    model: ModelField,
    language: Annotated[str | None, Form(description="ISO-639-1 code (zh, en...); default: "
                                                     "detected")] = None,
    prompt: PromptField = None,
    response_format: FormatField = "json",
    temperature: TemperatureField = 0.0,
    timestamp_granularities: GranularityField = None,
    stream: StreamField = False,
) -> Response:
    """As `POST https://api.openai.com/v1/audio/transcriptions`."""
    return await _respond(request, "transcribe", file, language, prompt, response_format,
                          temperature, timestamp_granularities, stream)


@router.post("/audio/translations", responses=ERRORS,
             summary="Translate audio to English text (OpenAI's API)")
async def translations(
    request: Request,
    file: FileField,
    model: ModelField,
    prompt: PromptField = None,
    response_format: FormatField = "json",
    temperature: TemperatureField = 0.0,
    stream: StreamField = False,
) -> Response:
    """As `POST https://api.openai.com/v1/audio/translations` (English text)."""
    return await _respond(request, "translate", file, None, prompt, response_format,
                          temperature, None, stream)


def _model_card(request: Request) -> dict[str, Any]:
    return {"id": request.app.state.recognizer.name, "object": "model", "created": CREATED,
            "owned_by": "whispertune"}


@router.get("/models", summary="The served model (OpenAI's API)")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(request)]}


@router.get("/models/{model_id:path}", summary="One model (OpenAI's API)")
async def model(request: Request, model_id: str) -> Response:
    card = _model_card(request)
    if model_id != card["id"]:
        return JSONResponse(error_body(request.url.path, 404, f"no model {model_id!r}; this "
                                       f"server serves {card['id']!r}", "model"), 404)
    return JSONResponse(card)
