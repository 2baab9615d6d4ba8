"""Export and merge as a front end drives them: ProgressEvents in order (done never back, never
past total), ``cancel`` stops between stages and tensors leaving no output and no temporary
folder, and ``--force`` never loses the old output when the new one cannot be moved in."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.tiny import save_tiny_whisper
from whispertune import staging
from whispertune.export.ct2 import export_ct2
from whispertune.export.ggml import export_ggml
from whispertune.merge import merge_adapter
from whispertune.progress import Cancelled, ProgressEvent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # ffn = 4 x d_model: a model whisper.cpp accepts, so one model serves every export
    path = tmp_path_factory.mktemp("tiny") / "hf"
    return save_tiny_whisper(path, encoder_ffn_dim=256, decoder_ffn_dim=256)


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(out)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(tiny)
    config_path.write_text(json.dumps(config))
    return out


def assert_well_ordered(events: list[ProgressEvent], stages: list[str]) -> None:
    """Stages in this order, each once; within one, done never goes back nor passes total."""
    seen = [e.stage for i, e in enumerate(events) if i == 0 or events[i - 1].stage != e.stage]
    assert seen == stages
    for a, b in zip(events, events[1:], strict=False):
        if a.stage == b.stage:
            assert b.done >= a.done
    for e in events:
        assert e.total is not None and 0 <= e.done <= e.total
        assert e.unit
    last = {e.stage: e for e in events}
    assert all(e.done == e.total for e in last.values())  # every stage finished


def cancel_when(stage: str, done: float):
    """A progress callback that records events and sets the cancel event at (stage, done)."""
    events: list[ProgressEvent] = []
    cancel = threading.Event()

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.stage == stage and event.done >= done:
            cancel.set()

    return events, cancel, progress


def test_ggml_events_in_order(tiny, tmp_path):
    events: list[ProgressEvent] = []
    export_ggml(tiny, tmp_path / "m.bin", progress=events.append)
    assert_well_ordered(events, ["load", "write", "verify"])
    write = [e for e in events if e.stage == "write"]
    assert write[0].unit == "tensor" and write[-1].total == len(write) - 1  # 0, 1, .., n


def test_ggml_cancel_after_first_tensor_leaves_nothing(tiny, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    events, cancel, progress = cancel_when("write", 1)
    with pytest.raises(Cancelled) as info:
        export_ggml(tiny, folder / "m.bin", progress=progress, cancel=cancel)
    assert info.value.state == "removed"
    assert list(folder.iterdir()) == []  # no output, no temporary file
    assert events[-1].stage == "write" and events[-1].done == 1  # stopped at that tensor


def test_ggml_cancel_keeps_an_existing_output(tiny, tmp_path):
    out = tmp_path / "m.bin"
    out.write_bytes(b"old model")
    _, cancel, progress = cancel_when("write", 1)
    with pytest.raises(Cancelled):
        export_ggml(tiny, out, force=True, progress=progress, cancel=cancel)
    assert out.read_bytes() == b"old model" and [p.name for p in tmp_path.iterdir()] == ["m.bin"]


def test_ct2_events_in_order_and_merge_stage_for_an_adapter(tiny, adapter, tmp_path):
    events: list[ProgressEvent] = []
    export_ct2(str(tiny), tmp_path / "plain", quantization="float32", progress=events.append)
    assert_well_ordered(events, ["convert", "write"])
    events.clear()
    export_ct2(str(adapter), tmp_path / "merged", quantization="float32", progress=events.append)
    assert_well_ordered(events, ["merge", "convert", "write"])


@pytest.mark.parametrize("stage", ["convert", "write"])
def test_ct2_cancel_leaves_nothing(tiny, tmp_path, stage):
    folder = tmp_path / "out"
    folder.mkdir()
    # "convert" done 1: converted, not yet completed; "write" done 0: before the support files
    _, cancel, progress = cancel_when(stage, 1 if stage == "convert" else 0)
    with pytest.raises(Cancelled):
        export_ct2(str(tiny), folder / "ct2", progress=progress, cancel=cancel)
    assert list(folder.iterdir()) == []


def test_merge_events_and_cancel(adapter, tmp_path):
    events: list[ProgressEvent] = []
    merge_adapter(adapter, tmp_path / "merged", progress=events.append)
    assert_well_ordered(events, ["merge", "write"])
    assert (tmp_path / "merged" / "model.safetensors").is_file()

    for stage, done in (("merge", 1), ("write", 1)):
        folder = tmp_path / f"cancel-{stage}"
        folder.mkdir()
        _, cancel, progress = cancel_when(stage, done)
        with pytest.raises(Cancelled) as info:
            merge_adapter(adapter, folder / "merged", progress=progress, cancel=cancel)
        assert info.value.state == "removed"
        assert list(folder.iterdir()) == []


def test_force_keeps_the_old_output_when_the_new_cannot_be_moved_in(tiny, tmp_path, monkeypatch):
    out = tmp_path / "ct2"
    out.mkdir()
    (out / "model.bin").write_text("old")
    real_replace = staging.os.replace
    calls: list[tuple[Path, Path]] = []

    def failing_second_move(src, dst):
        calls.append((Path(src), Path(dst)))
        if len(calls) == 2:  # the old one is aside; moving the new one in fails
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(staging.os, "replace", failing_second_move)
    with pytest.raises(OSError, match="disk full"):
        export_ct2(str(tiny), out, quantization="float32", force=True)
    assert (out / "model.bin").read_text() == "old"  # put back
    assert [p.name for p in tmp_path.iterdir()] == ["ct2"]  # no temporary folder
    assert calls[0][0] == out and calls[0][1].parent.parent == tmp_path  # aside, beside it

    monkeypatch.setattr(staging.os, "replace", real_replace)
    export_ct2(str(tiny), out, quantization="float32", force=True)
    assert (out / "model.bin").read_bytes() != b"old" and (out / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ct2"]
