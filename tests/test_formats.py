"""Transcript writers: exact layouts of txt, srt, vtt, tsv and json."""

from __future__ import annotations

import json

from whispertune.backends.base import Word
from whispertune.formats import format_timestamp, output_stems, render, write_outputs
from whispertune.transcribe import Segment, TranscriptionInfo, TranscriptionResult


def result() -> TranscriptionResult:
    info = TranscriptionInfo(source="a.wav", language="zh", language_probability=0.97,
                             duration=3725.0)
    segs = [
        Segment(1, 0.0, 2.5, "你好世界", words=[Word(0.0, 1.0, "你好", 0.9)]),
        Segment(2, 2.5, 2.5, "   "),  # empty text: left out everywhere
        Segment(3, 3661.0005, 3662.25, " second line\nwith --> arrow "),
    ]
    return TranscriptionResult(info, segs)


def test_format_timestamp():
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(3661.2346) == "01:01:01.235"
    assert format_timestamp(61.5, always_include_hours=False) == "01:01.500"
    assert format_timestamp(3600, always_include_hours=False) == "01:00:00.000"
    assert format_timestamp(-0.01) == "00:00:00.000"
    assert format_timestamp(1.5, marker=",") == "00:00:01,500"


def test_txt_srt_vtt_tsv_layouts():
    r = result()
    assert render(r, "txt") == "你好世界\nsecond line with -> arrow\n"
    assert render(r, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\n你好世界\n\n"
        "2\n01:01:01,000 --> 01:01:02,250\nsecond line with -> arrow\n"
    )
    assert render(r, "vtt") == (
        "WEBVTT\n\n00:00.000 --> 00:02.500\n你好世界\n\n"
        "01:01:01.000 --> 01:01:02.250\nsecond line with -> arrow\n"
    )
    assert render(r, "tsv") == (
        "start\tend\ttext\n0\t2500\t你好世界\n3661000\t3662250\tsecond line with -> arrow\n"
    )


def test_json_has_text_language_probability_segments_and_words():
    data = json.loads(render(result(), "json"))
    assert data["language"] == "zh" and data["language_probability"] == 0.97
    assert data["text"].startswith("你好世界") and data["text"].endswith("arrow")
    assert data["segments"][0]["words"][0] == {"start": 0.0, "end": 1.0, "word": "你好",
                                               "probability": 0.9}
    assert len(data["segments"]) == 3


def test_empty_transcript_gives_valid_empty_files(tmp_path):
    r = TranscriptionResult(TranscriptionInfo(source="s.wav", duration=0.0), [])
    paths = write_outputs(r, tmp_path / "out", "s", ["txt", "srt", "vtt", "json", "tsv"])
    assert [p.name for p in paths] == ["s.txt", "s.srt", "s.vtt", "s.json", "s.tsv"]
    assert (tmp_path / "out/s.txt").read_text() == ""
    assert (tmp_path / "out/s.vtt").read_text() == "WEBVTT\n"
    assert json.loads((tmp_path / "out/s.json").read_text())["segments"] == []
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_output_stems_never_collide(tmp_path):
    paths = [tmp_path / "a/talk.mp3", tmp_path / "b/talk.wav", tmp_path / "x.flac"]
    assert output_stems(paths) == ["talk", "talk-2", "x"]


def test_two_writers_of_one_output_never_collide(tmp_path):
    """Each write goes through its own temporary name (two transcribe runs writing the same
    file raced on one fixed name: FileNotFoundError), and no temporary file is left."""
    import threading

    from whispertune.staging import atomic_text_file

    target = tmp_path / "talk.srt"
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(200):
                with atomic_text_file(target) as fh:
                    fh.write(text)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(c * 1000,)) for c in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["talk.srt"]
