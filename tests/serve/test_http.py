"""The server's HTTP mechanics over real HTTP: a ``whispertune serve`` subprocess with a tiny
random model (its text is noise; what is checked is the framing, the shapes, the statuses,
the limits and that the server stays up)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.serve.conftest import Server, start_server, stop_server, tiny_config

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")


def post(server: Server, route: str, files=None, data=None, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", files=files, data=data, timeout=120, **kw)


def frames(body: bytes) -> list[dict]:
    """A /recognition_stream body: JSON objects each followed by one \\0."""
    assert body.endswith(b"\0"), body[-50:]
    return [json.loads(part) for part in body[:-1].split(b"\0")]


def sse_events(body: str) -> list[dict]:
    events = []
    for block in body.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            events.append(json.loads(block[len("data: "):]))
    return events


def client(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_health_models_page_and_docs(tiny_server):
    health = tiny_server.health()
    assert health["status"] == "ok" and health["batching"] is True
    assert health["requests"]["max_queue"] == 2
    models = client(tiny_server).models.list()
    assert [m.id for m in models.data] == [health["model"]]
    page = httpx.get(f"{tiny_server.url}/", timeout=10)
    assert page.status_code == 200 and "/recognition_stream" in page.text
    schema = httpx.get(f"{tiny_server.url}/openapi.json", timeout=10).json()
    assert {"/recognition", "/recognition_stream", "/v1/audio/transcriptions",
            "/v1/audio/translations", "/v1/models", "/health"} <= set(schema["paths"])
    # every form field of the seed's route is described in /docs
    ref = schema["paths"]["/recognition"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    props = schema["components"]["schemas"][ref]["properties"]
    assert set(props) == {"audio", "to_simple", "remove_pun", "language", "task"}
    assert all(p.get("description") for p in props.values())
    # /docs works offline: Swagger UI comes from the server, not a CDN, and needs no key
    docs = httpx.get(f"{tiny_server.url}/docs", timeout=10)
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn.jsdelivr.net" not in docs.text and "/openapi.json" in docs.text
    js = httpx.get(f"{tiny_server.url}/docs-assets/swagger-ui-bundle.js", timeout=10)
    assert js.status_code == 200 and len(js.content) > 500_000


def test_recognition_and_its_stream_give_the_same_segments(tiny_server, jfk):
    whole = post(tiny_server, "/recognition", {"audio": jfk.open("rb")})
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert body["code"] == 0 and body["results"]
    for seg in body["results"]:
        assert set(seg) == {"result", "start", "end"}
        assert 0 <= seg["start"] <= seg["end"] <= 11.1
        assert seg["start"] == round(seg["start"], 2)
    streamed = post(tiny_server, "/recognition_stream", {"audio": jfk.open("rb")})
    assert streamed.status_code == 200
    assert frames(streamed.content) == body["results"]


def test_stream_sends_the_first_segment_before_the_last_is_decoded(tiny_server, longform):
    arrivals: list[float] = []
    buffer = b""
    start = time.perf_counter()
    with httpx.stream("POST", f"{tiny_server.url}/recognition_stream",
                      files={"audio": longform.open("rb")}, timeout=120) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            buffer += chunk
            arrivals.extend([time.perf_counter() - start] * chunk.count(b"\0"))
    segments = frames(buffer)
    assert len(segments) == len(arrivals) >= 4
    assert all(s["end"] <= 215 for s in segments)
    # decoded in several batches, each batch's segments sent as soon as it is done (a server
    # that buffered the response would deliver them all at once)
    assert arrivals[-1] - arrivals[0] > 0.5, arrivals


def test_openai_sse_deltas_add_up_to_the_text(tiny_server, jfk):
    r = post(tiny_server, "/v1/audio/transcriptions", {"file": jfk.open("rb")},
             {"model": "whisper-1", "stream": "true"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [e["type"] for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "transcript.text.done" and len(events) >= 2
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"]
    plain = post(tiny_server, "/v1/audio/transcriptions", {"file": jfk.open("rb")},
                 {"model": "whisper-1"})
    assert plain.json() == {"text": events[-1]["text"]}


def test_openai_client_round_trip_for_every_format(tiny_server, jfk):
    c = client(tiny_server)
    verbose = c.audio.transcriptions.create(
        file=jfk.open("rb"), model="whisper-1", response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert verbose.language == "english" and abs(verbose.duration - 11.0) < 0.1
    segments = verbose.segments
    assert segments and [s.id for s in segments] == list(range(len(segments)))
    for s in segments:
        assert s.end >= s.start and isinstance(s.tokens, list) and s.tokens
        assert s.avg_logprob is not None and s.compression_ratio is not None
        assert s.no_speech_prob is not None and s.temperature == 0.0
    assert verbose.words and all(w.end >= w.start for w in verbose.words)
    text = verbose.text
    assert c.audio.transcriptions.create(file=jfk.open("rb"), model="x").text == text
    plain = c.audio.transcriptions.create(file=jfk.open("rb"), model="x",
                                          response_format="text")
    assert plain.strip() == text
    srt = c.audio.transcriptions.create(file=jfk.open("rb"), model="x", response_format="srt")
    cues = [b for b in srt.strip().split("\n\n") if b]
    assert len(cues) == len([s for s in segments if s.text.strip()])
    for i, cue in enumerate(cues, 1):
        lines = cue.split("\n")
        assert lines[0] == str(i)
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", lines[1])
    vtt = c.audio.transcriptions.create(file=jfk.open("rb"), model="x", response_format="vtt")
    assert vtt.startswith("WEBVTT") and vtt.count(" --> ") == len(cues)
    translated = c.audio.translations.create(file=jfk.open("rb"), model="x")
    assert isinstance(translated.text, str)
    events = list(c.audio.transcriptions.create(file=jfk.open("rb"), model="x", stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].text == text
    assert "".join(e.delta for e in events[:-1]) == text


def _silence_flac(path: Path, seconds: float) -> Path:
    sf.write(str(path), np.zeros(int(seconds * 16000), dtype=np.int16), 16000, format="FLAC")
    return path


def _bad_inputs(tmp: Path, jfk: Path) -> list[tuple]:
    junk = tmp / "notes.wav"
    junk.write_bytes(b"this is not audio at all " * 40)
    empty = tmp / "empty.wav"
    empty.write_bytes(b"")
    truncated = tmp / "cut.flac"
    truncated.write_bytes(jfk.read_bytes()[:60_000])
    long = _silence_flac(tmp / "long.flac", 320)  # > --max-duration 300
    big = tmp / "big.wav"
    big.write_bytes(b"\0" * 3_200_000)  # > --max-upload-mb 3
    seed, oa = "/recognition", "/v1/audio/transcriptions"
    m = {"model": "whisper-1"}
    return [
        # (route, file field, path, form fields, status, words in the message)
        (seed, "audio", junk, {}, 415, "not a readable audio file"),
        (oa, "file", junk, m, 415, "not a readable audio file"),
        (seed, "audio", empty, {}, 400, "empty"),
        (oa, "file", empty, m, 400, "empty"),
        (seed, "audio", truncated, {}, 400, "cut.flac"),
        (seed, "audio", jfk, {"language": "xx"}, 400, "unknown language"),
        (oa, "file", jfk, {**m, "language": "xx"}, 400, "unknown language"),
        (seed, "audio", jfk, {"task": "summarize"}, 400, "task"),
        (seed, "audio", jfk, {"to_simple": "yes"}, 400, "to_simple"),
        (seed, None, None, {"language": "en"}, 400, "missing field 'audio'"),
        (oa, "file", jfk, {}, 400, "missing field 'model'"),
        (oa, "file", jfk, {**m, "response_format": "docx"}, 400, "response_format"),
        (oa, "file", jfk, {**m, "temperature": "3"}, 400, "temperature"),
        (seed, "audio", long, {}, 400, "--max-duration"),
        (oa, "file", long, m, 400, "--max-duration"),
        (seed, "audio", big, {}, 413, "--max-upload-mb"),
        (oa, "file", big, m, 413, "--max-upload-mb"),
    ]


def test_every_bad_input_gets_its_status_and_json_and_the_server_stays_up(
    tiny_server, jfk, tmp_path
):
    for route, field, path, data, status, words in _bad_inputs(tmp_path, jfk):
        files = {field: path.open("rb")} if field else None
        r = post(tiny_server, route, files, data)
        case = f"{route} {path.name if path else '-'} {data}"
        assert r.status_code == status, f"{case}: {r.status_code} {r.text}"
        body = r.json()
        if route.startswith("/v1/"):
            err = body["error"]
            assert set(err) == {"message", "type", "param", "code"}, case
            assert err["type"] == "invalid_request_error", case
            message = err["message"]
        else:
            assert body["code"] == status, case
            message = body["msg"]
        assert words in message, f"{case}: {message}"
        assert str(tiny_server.tmp) not in message and "/tmp" not in message, message
        assert tiny_server.health()["status"] == "ok"
    # the openai client turns those bodies into its typed exceptions
    with pytest.raises(openai.BadRequestError, match="unknown language"):
        client(tiny_server).audio.transcriptions.create(file=jfk.open("rb"), model="x",
                                                        language="xx")
    with pytest.raises(openai.APIStatusError) as info:
        client(tiny_server).audio.transcriptions.create(file=(tmp_path / "notes.wav").open("rb"),
                                                        model="x")
    assert info.value.status_code == 415
    # an upload without Content-Length is counted while it is read
    def chunks():
        yield (b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
               b"Content-Type: audio/wav\r\n\r\n")
        for _ in range(40):
            yield b"\0" * 100_000

    r = httpx.post(f"{tiny_server.url}/recognition", timeout=60, content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["msg"]
    assert tiny_server.wait_idle()["requests"]["admitted"] == 0
    assert tiny_server.leftover_files() == []


def test_full_queue_answers_503_and_a_client_that_leaves_cancels_its_work(
    tiny_server, longform, jfk
):
    started = threading.Barrier(3, timeout=60)
    errors: list[BaseException] = []

    def leave_early():
        try:
            with httpx.stream("POST", f"{tiny_server.url}/recognition_stream",
                              files={"audio": longform.open("rb")}, timeout=60) as r:
                assert r.status_code == 200
                started.wait()  # the response began: the request is admitted and decoding
                started.wait()  # the main thread has checked the queue: disconnect
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=leave_early) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    try:
        busy = post(tiny_server, "/recognition", {"audio": jfk.open("rb")})
        busy_oa = post(tiny_server, "/v1/audio/transcriptions", {"file": jfk.open("rb")},
                       {"model": "x"})
    finally:
        started.wait()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert busy.status_code == 503 and busy.headers["retry-after"].isdigit()
    assert busy.json()["code"] == 503 and "--max-queue" in busy.json()["msg"]
    assert busy_oa.status_code == 503 and busy_oa.json()["error"]["type"] == "server_error"
    # both streams were dropped after their first bytes: the runs stop at their next batch
    assert tiny_server.wait_idle(30)["requests"]["admitted"] == 0
    deadline = time.monotonic() + 30
    while tiny_server.log_text().count("/recognition_stream 499") < 2:
        assert time.monotonic() < deadline, tiny_server.log_text()[-2000:]
        time.sleep(0.2)
    cancelled = [line for line in tiny_server.log_text().splitlines() if " 499 " in line]
    # each stopped well before the ~10 s the whole file takes this model
    for line in cancelled:
        decode = float(re.search(r"decode ([\d.]+) s", line).group(1))
        assert decode < 8, line
    assert tiny_server.leftover_files() == []


def test_a_transformers_model_is_served_and_the_key_guards_all_but_health_and_page(
    tiny_model, tmp_path, jfk
):
    # served from the transformers directory (what training writes): converted to
    # CTranslate2 once at load, into the cache
    hf = tiny_model.parent / "hf"
    cache = tmp_path / "cache"
    server = start_server(tmp_path / "keyed", str(hf), *tiny_config(tmp_path),
                          env={"WHISPERTUNE_API_KEY": "s3cret", "WHISPERTUNE_CACHE": str(cache)})
    assert any(p.name == "model.bin" for p in cache.rglob("*"))
    try:
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{server.url}/", timeout=10).status_code == 200
        for open_path in ("/docs", "/redoc", "/docs-assets/swagger-ui.css"):
            assert httpx.get(f"{server.url}{open_path}", timeout=10).status_code == 200
        for key in (None, "wrong"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.get(f"{server.url}/v1/models", headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = post(server, "/recognition", {"audio": jfk.open("rb")}, headers=headers)
            assert r.status_code == 401 and r.json()["code"] == 401
        with pytest.raises(openai.AuthenticationError):
            client(server, "wrong").models.list()
        ok = post(server, "/recognition", {"audio": jfk.open("rb")},
                  headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["code"] == 0
        assert client(server, "s3cret").models.list().data
    finally:
        stop_server(server)


def test_a_public_address_without_a_key_is_warned_about(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "whispertune", "serve", "--host", "0.0.0.0",
         "--model", str(tmp_path / "no-model-here")],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in __import__("os").environ.items() if k != "WHISPERTUNE_API_KEY"},
    )
    assert "warning: listening on 0.0.0.0 without an API key" in r.stderr
    assert r.returncode != 0  # and the missing model is an error, not a server
