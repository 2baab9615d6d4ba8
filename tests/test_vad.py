"""VAD helpers: speech regions grouped into spans, span-to-file times, pass-by-pass span finding
over a streamed file, and the corrections the VAD makes to Whisper's segment starts."""

from __future__ import annotations

import numpy as np
import pytest

from whispertune.audio import SAMPLE_RATE, AudioBuffer, AudioStream, load_audio
from whispertune.backends.base import ClipSegment
from whispertune.vad import (
    VAD_FRAME,
    Span,
    SpeechFinder,
    VadSettings,
    group_regions,
    snap_starts_to_speech,
    speech_seconds,
)

CLIP = "src/whispertune/samples/aishell_s0150/clips/BAC009S0150W0445.opus"
S = SAMPLE_RATE


def _regions(*pairs: tuple[float, float]) -> list[dict]:
    return [{"start": int(a * S), "end": int(b * S)} for a, b in pairs]


def test_regions_are_grouped_into_spans_of_at_most_30_s_with_their_pauses():
    buffer = np.arange(100 * S, dtype=np.float32)
    # 1 s pause kept inside a span; a 3 s pause (> 2 s) ends it; 30 s is the limit
    spans = list(group_regions(buffer, _regions((0, 5), (6, 10), (13, 20), (20.5, 45)), 0))
    assert [(sp.file_start / S, sp.file_end / S) for sp in spans] == [
        (0, 10), (13, 20), (20.5, 45)]
    assert len(spans[0].audio) == 10 * S  # the pause is decoded with the speech
    assert np.array_equal(spans[0].audio, buffer[: 10 * S])


def test_a_span_maps_its_times_to_the_file_through_its_pieces():
    span = Span(np.zeros(6 * S, dtype=np.float32), [(0, 10 * S, 2 * S), (2 * S, 20 * S, 4 * S)])
    assert span.file_start == 10 * S and span.file_end == 24 * S
    assert span.to_file(1.0) == 11.0 and span.to_file(3.0) == 21.0
    assert span.to_file(2.0) == 20.0 and span.to_file(2.0, is_end=True) == 12.0
    tail = span.tail(3 * S)
    assert len(tail.audio) == 3 * S and tail.file_start == 21 * S and tail.to_file(0.5) == 21.5


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory):
    """Three pieces of speech with 4 s of silence after each, 30 s of silence, and three more
    (about 73 s)."""
    import soundfile as sf

    a = load_audio(CLIP)
    gap = np.zeros(4 * S, dtype=np.float32)
    silence = np.zeros(30 * S, dtype=np.float32)
    path = tmp_path_factory.mktemp("vad") / "six.wav"
    sf.write(path, np.concatenate([a, gap] * 3 + [silence] + [a, gap] * 3), S)
    return path


def _spans(path, pass_seconds: float) -> tuple[list[tuple[int, int]], int, int]:
    buffer = AudioBuffer(AudioStream(path, block_seconds=1.0))
    finder = SpeechFinder(buffer, VadSettings(), int(pass_seconds * S))
    spans, most = [], 0
    while not finder.eof:
        spans += [(sp.file_start, sp.file_end) for sp in finder.next_pass()]
        most = max(most, len(buffer.audio))
    return spans, finder.speech, most


def test_spans_found_pass_by_pass_are_those_of_one_pass(speech_file):
    """A region near the end of a pass, and the pass's last span, are carried over and grouped
    with what follows: short passes find the same spans as one pass over the whole file. A
    pass that holds one span followed by silence moves on (it once read nothing more and
    found the same span again, forever)."""
    whole, speech, _ = _spans(speech_file, 120)
    assert len(whole) == 6 and 16 * S < speech < 24 * S
    parts, speech_parts, most = _spans(speech_file, 34)
    # the VAD sees a region's edges a few ms apart when it runs on a shorter buffer
    assert len(parts) == len(whole)
    assert np.abs(np.array(parts) - np.array(whole)).max() < 0.05 * S
    assert speech_parts == pytest.approx(speech, rel=0.01)
    assert most <= 34 * S  # a pass at a time, not the file


def test_a_first_window_limits_only_the_first_span():
    buffer = np.arange(100 * S, dtype=np.float32)
    regions = _regions((0, 4), (4.5, 8), (8.5, 12), (12.5, 16), (16.5, 30), (30.5, 40))
    plain = list(group_regions(buffer, regions, 0))
    assert [(sp.file_start / S, sp.file_end / S) for sp in plain] == [(0, 30), (30.5, 40)]
    short = list(group_regions(buffer, regions, 0, first_window=10 * S))
    # the first span stops at the last pause before 10 s; the rest is grouped up to 30 s
    assert [(sp.file_start / S, sp.file_end / S) for sp in short] == [
        (0, 8), (8.5, 30), (30.5, 40)]
    # a first region longer than the limit stays whole
    long_first = list(group_regions(buffer, _regions((0, 14), (14.5, 20)), 0,
                                    first_window=10 * S))
    assert [(sp.file_start / S, sp.file_end / S) for sp in long_first] == [(0, 14), (14.5, 20)]


def test_a_short_first_span_is_found_after_a_short_first_pass(speech_file):
    """With ``first_span_samples`` the first pass reads what the first span needs (not 4
    minutes) and the spans after it are those of the plain finder."""
    buffer = AudioBuffer(AudioStream(speech_file, block_seconds=1.0))
    finder = SpeechFinder(buffer, VadSettings(), 240 * S, first_span_samples=3 * S)
    first = finder.next_pass()
    assert first  # the first pass already gives a span to decode
    read_first = buffer.start + len(buffer.audio)
    assert read_first < 45 * S  # the file is 73 s; a 4 minute pass would read all of it
    spans = [(sp.file_start, sp.file_end) for sp in first]
    while not finder.eof:
        spans += [(sp.file_start, sp.file_end) for sp in finder.next_pass()]
    whole, _, _ = _spans(speech_file, 240)
    # the clip (about 3.3 s of speech) fits no 3 s span: it stays whole, and everything
    # after it is grouped as before
    assert len(spans) == len(whole)
    assert np.abs(np.array(spans) - np.array(whole)).max() < 0.05 * S


def test_speech_seconds_count_frames_above_the_threshold_after_a_time():
    probs = np.array([0.1, 0.9, 0.9, 0.2, 0.8], dtype=np.float32)
    frame = VAD_FRAME / S
    assert speech_seconds(probs, 0.0, 0.5) == pytest.approx(3 * frame)
    assert speech_seconds(probs, 2 * frame, 0.5) == pytest.approx(2 * frame)


def test_starts_in_a_pause_move_onto_the_speech_and_no_further():
    frame = VAD_FRAME / S
    probs = np.zeros(200, dtype=np.float32)
    probs[50:100] = 0.9  # speech from 1.6 s
    early = ClipSegment(start=1.0, end=3.0, text="a")  # in the pause before it
    inside = ClipSegment(start=2.0, end=3.0, text="b")  # already on speech
    far = ClipSegment(start=0.0, end=1.0, text="c")  # no speech before its end
    snap_starts_to_speech([early, inside, far], probs, pad=0.2)
    assert early.start == pytest.approx(50 * frame - 0.2)
    assert inside.start == 2.0 and far.start == 0.0
