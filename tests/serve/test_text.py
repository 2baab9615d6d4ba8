"""What the server writes with the real built-in base: exactly the library's Pipeline result
for the same options (what ``whispertune transcribe`` writes), also when concurrent requests
share batches."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def library_model():
    from whispertune import api

    model = api.load_model("builtin:base", threads=2)
    yield model
    model.close()


def expected(model, path, **decode) -> list[tuple[str, float, float]]:
    from whispertune.backends.base import DecodeOptions
    from whispertune.serve.options import ServeOptions
    from whispertune.transcribe import Pipeline

    # the server's long-form defaults: transcribe's, with --first-span-seconds 10
    pipeline = Pipeline(model.transcriber, DecodeOptions(**decode), ServeOptions().long_form,
                        model=model.name)
    return [(s.text, round(s.start, 2), round(s.end, 2))
            for s in pipeline.stream(path).result().segments]


def test_seed_route_text_equals_the_pipeline(base_server, library_model, jfk):
    r = httpx.post(f"{base_server.url}/recognition", files={"audio": jfk.open("rb")},
                   data={"to_simple": "0"}, timeout=300)
    assert r.status_code == 200, r.text
    got = [(s["result"], s["start"], s["end"]) for s in r.json()["results"]]
    want = expected(library_model, jfk)  # language detected, as the server's default
    assert got == want
    assert "ask not what your country can do for you" in " ".join(t for t, _, _ in got)


def test_concurrent_requests_share_batches_and_each_gets_the_pipelines_text(
    base_server, library_model, aishell_clips
):
    clips = sorted(aishell_clips[:12], key=lambda p: p.stat().st_size)[:3]  # the shortest
    before = base_server.health()["batches"]

    def ask(path):
        r = httpx.post(f"{base_server.url}/v1/audio/transcriptions",
                       files={"file": path.open("rb")},
                       data={"model": "whisper-1", "language": "zh",
                             "response_format": "verbose_json"}, timeout=300)
        assert r.status_code == 200, r.text
        return [(s["text"], round(s["start"], 2), round(s["end"], 2))
                for s in r.json()["segments"]]

    with ThreadPoolExecutor(len(clips)) as pool:
        got = list(pool.map(ask, clips))
    after = base_server.health()["batches"]
    # requests of one speech span each, in fewer decodes than requests
    assert after["clips"] - before["clips"] >= len(clips)
    assert after["calls"] - before["calls"] < after["clips"] - before["clips"]
    assert after["largest"] >= 2
    for path, segments in zip(clips, got, strict=True):
        assert segments == expected(library_model, path, language="zh"), path.name
