"""Training mechanics on a tiny Whisper: every method learns, resume is exact, DDP works, the
encoder cache changes nothing but speed, merge is faithful, bad inputs stop before training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import write_manifest
from whispertune import options
from whispertune.data.manifest import read_manifest
from whispertune.errors import UserError
from whispertune.models.loading import load_transformers
from whispertune.output_style import OutputStyle
from whispertune.train import TrainOptions, hardware, train
from whispertune.train.validate import Validator

REPO = Path(__file__).resolve().parents[2]


def _opts(model, manifest, out, **kw) -> TrainOptions:
    values = {
        "model": str(model),
        "train": manifest,
        "output": out,
        "language": "Chinese",
        "batch_size": 4,
        "log_steps": 1,
        "num_workers": 0,
        "warmup_steps": 0,
        "threads": 1,
        "pack_seconds": 0.0,  # clip counts below are clips; packing has its own tests
    }
    values.update(kw)
    return options.build(TrainOptions, values)


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize(
    "method,extra",
    [
        ("lora", {"lora_scope": "all"}),
        ("adalora", {"lora_scope": "all"}),
        ("full", {"freeze_encoder": True}),
        ("lora", {"lora_scope": "decoder"}),
        ("lora", {"lora_scope": "decoder", "encoder_layers": 1}),
        ("full", {"freeze_encoder": True, "encoder_layers": 1}),
        ("full", {}),
    ],
    ids=[
        "lora",
        "adalora",
        "full-frozen-encoder",
        "lora-decoder-cached",
        "lora-decoder-top-encoder-cached",
        "full-top-encoder-cached",
        "full",
    ],
)
def test_each_method_learns_a_repeated_batch(tiny_model, tmp_path, method, extra):
    manifest = write_manifest(tmp_path / "m.jsonl", 4)
    lr = {"lora": 3e-3, "adalora": 2e-2, "full": 1e-3}[method]
    o = _opts(
        tiny_model,
        manifest,
        tmp_path / "run",
        method=method,
        max_steps=20,
        learning_rate=lr,
        lora_dropout=0.0,
        scheduler="constant",
        **extra,
    )
    result = train(o)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 20 and result.steps == 20
    # a random tiny model starts at ln(51865) = 10.86 nats; a broken gradient path stays there
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.4, losses
    assert (
        result.best_dir / ("adapter_config.json" if method != "full" else "model.safetensors")
    ).is_file()
    cached = extra.get("lora_scope") == "decoder" or extra.get("freeze_encoder", False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["encoder_cache"] == cached


def test_adalora_schedule_is_in_optimizer_steps(tiny_model, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", 8)
    o = _opts(
        tiny_model,
        manifest,
        tmp_path / "run",
        method="adalora",
        epochs=3,
        batch_size=2,
        grad_accum=2,
    )
    train(o)
    config = json.loads((tmp_path / "run" / "best" / "adapter_config.json").read_text())
    # 8 samples / batch 2 = 4 micro-batches = 2 optimizer steps per epoch; 3 epochs
    assert config["total_step"] == 6
    assert config["tinit"] < config["total_step"] - config["tfinal"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["total_steps"] == 6 and run["steps_per_epoch"] == 2


@pytest.mark.parametrize("trained_layers", [0, 1], ids=["output", "input-of-last-layer"])
def test_encoder_cache_gives_the_same_loss(tiny_model, tmp_path, trained_layers):
    from whispertune.models.loading import load_processor
    from whispertune.models.sources import resolve
    from whispertune.train.dataset import SpeechDataset, collate
    from whispertune.train.encoder_cache import CachedDataset, build_encoder_cache
    from whispertune.train.labels import SpecialTokens
    from whispertune.train.model import build_model, run_top_encoder, top_encoder

    manifest = write_manifest(tmp_path / "m.jsonl", 4)
    o = _opts(
        tiny_model, manifest, tmp_path / "run", lora_scope="decoder", encoder_layers=trained_layers
    )
    loaded = build_model(o, 10)
    names = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    last = loaded.model.config.encoder_layers - 1
    encoder_names = {n.split(".layers.")[1].split(".")[0] for n in names if ".encoder." in n}
    assert encoder_names == ({str(last)} if trained_layers else set()), names
    processor = load_processor(resolve(str(tiny_model)))
    special = SpecialTokens.from_tokenizer(processor.tokenizer)
    from whispertune.data.manifest import read_manifest

    ds = SpeechDataset(
        read_manifest(manifest), processor.feature_extractor, processor.tokenizer, special, o
    )
    encoder = loaded.model.get_encoder()
    ran_last = []  # the trained layer does not run while its input is cached
    hook = encoder.layers[-1].register_forward_hook(lambda *args: ran_last.append(1))
    cache = build_encoder_cache(encoder, ds, tmp_path / "cache", "k", trained_layers=trained_layers)
    hook.remove()
    assert len(ran_last) == (0 if trained_layers else 1)  # 4 clips, one batch
    plain = collate([ds[i] for i in range(4)], special.eot, special.sot)
    cached = collate([CachedDataset(ds, cache)[i] for i in range(4)], special.eot, special.sot)
    model = loaded.model.eval()
    with torch.no_grad():
        a = model(
            input_features=plain["input_features"], decoder_input_ids=plain["decoder_input_ids"]
        ).logits
        hidden = cached["encoder_hidden"]
        if trained_layers:
            hidden = run_top_encoder(top_encoder(model), hidden, trained_layers)
        b = model(
            encoder_outputs=(hidden,),
            decoder_input_ids=cached["decoder_input_ids"],
        ).logits
    ce = torch.nn.functional.cross_entropy
    la = ce(a.reshape(-1, a.shape[-1]), plain["labels"].reshape(-1), ignore_index=-100)
    lb = ce(b.reshape(-1, b.shape[-1]), cached["labels"].reshape(-1), ignore_index=-100)
    assert torch.equal(plain["labels"], cached["labels"])
    assert abs(float(la) - float(lb)) < 1e-3 * float(la)  # fp16 storage of the outputs


def _train_cmd(model, manifest, out, *extra):
    return [
        sys.executable,
        "-m",
        "whispertune",
        "-q",
        "train",
        "--model",
        str(model),
        "--train",
        str(manifest),
        "--output",
        str(out),
        "--language",
        "Chinese",
        "--batch-size",
        "2",
        "--max-steps",
        "10",
        "--save-steps",
        "2",
        "--log-steps",
        "1",
        "--num-workers",
        "0",
        "--threads",
        "1",
        "--warmup-steps",
        "2",
        "--save-total-limit",
        "20",
        "--pack-seconds",  # clips, not windows: 4 steps per epoch
        "0",
        *extra,
    ]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tiny_model, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", 8)  # 4 steps per epoch: kill mid-epoch
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the uninterrupted run on glibc's allocator, the killed one on what `auto` restarts with
    subprocess.run(
        _train_cmd(tiny_model, manifest, tmp_path / "a", "--allocator", "system"),
        check=True,
        env=env,
        capture_output=True,
    )
    proc = subprocess.Popen(
        _train_cmd(tiny_model, manifest, tmp_path / "b"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (tmp_path / "b/checkpoints/step-0000006").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    latest = (tmp_path / "b/latest").read_text().strip()
    assert latest in {"step-0000006", "step-0000008"}  # never a half-written checkpoint
    resumed = subprocess.run(
        _train_cmd(tiny_model, manifest, tmp_path / "b", "--resume"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(tmp_path / "a/checkpoints/step-0000010/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/step-0000010/adapter_model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), rel=1e-5)
    assert len(_losses(tmp_path / "b")) == 10  # resumed metrics replace, never duplicate
    library = hardware.caching_allocator_library() if sys.platform.startswith("linux") else None
    expected = "glibc" if library is None else "tcmalloc" if "tcmalloc" in library else "jemalloc"
    allocators = [json.loads((tmp_path / r / "run.json").read_text())["allocator"] for r in "ab"]
    assert allocators == ["glibc", expected]  # the same weights whichever allocator


def test_two_processes_with_torchrun(tiny_model, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", 8)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "whispertune",
        "-q",
        "train",
        "--model",
        str(tiny_model),
        "--train",
        str(manifest),
        "--output",
        str(tmp_path / "ddp"),
        "--language",
        "Chinese",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--num-workers",
        "0",
        "--threads",
        "1",
        "--log-steps",
        "1",
        "--pack-seconds",
        "0",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads((tmp_path / "ddp/run.json").read_text())
    assert run["world_size"] == 2
    assert run["steps_per_epoch"] == 2  # 4 batches shared by 2 ranks
    assert len(_losses(tmp_path / "ddp")) == 4  # one metrics writer: rank 0
    from whispertune.models.loading import load_transformers

    assert load_transformers(str(tmp_path / "ddp/best")).model is not None


def test_merge_gives_the_adapters_logits(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from whispertune.merge import merge_adapter

    # lines whose transcripts write numbers in characters (三十年, 一九九零年): the run records
    # that convention, and merge carries it
    manifest = write_manifest(tmp_path / "m.jsonl", 4, start=52)
    train(_opts(tiny_model, manifest, tmp_path / "run", max_steps=4, learning_rate=1e-2))
    assert json.loads((tmp_path / "run/best/output_style.json").read_text()) == {
        "numerals": "hanzi"
    }
    merged_dir = merge_adapter(tmp_path / "run/best", tmp_path / "merged")
    for name in (
        "output_style.json",
        "model.safetensors",
        "preprocessor_config.json",
        "generation_config.json",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
    ):
        assert (merged_dir / name).is_file(), name
    merged = WhisperForConditionalGeneration.from_pretrained(merged_dir).eval()
    base = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    adapted = PeftModel.from_pretrained(base, tmp_path / "run/best").eval()
    feats = torch.randn(2, 80, 3000)
    ids = torch.tensor([[50258, 50260, 50359, 50363]] * 2)
    with torch.no_grad():
        a = merged(input_features=feats, decoder_input_ids=ids).logits
        b = adapted(input_features=feats, decoder_input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(UserError, match="already exists"):
        merge_adapter(tmp_path / "run/best", tmp_path / "merged")


def test_broken_manifest_stops_before_training(tiny_model, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", 3)
    with open(manifest, "a") as fh:
        fh.write("{not json\n")
        fh.write('{"audio": {"path": "missing.wav"}, "sentence": "x"}\n')
    with pytest.raises(UserError) as err:
        train(_opts(tiny_model, manifest, tmp_path / "run", max_steps=2))
    assert f"{manifest}:4" in str(err.value) and f"{manifest}:5" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_output_holding_another_run_is_refused(tiny_model, tmp_path, small_manifest):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--resume.*--force"):
        train(_opts(tiny_model, small_manifest, tmp_path / "run", max_steps=2))


def test_filters_are_counted(tiny_model, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", 6)
    o = _opts(tiny_model, manifest, tmp_path / "run", max_steps=1, max_duration=5.0)
    result = train(o)
    assert "left out" in result.filtered and result.train_samples < 6


def test_hardware_errors_before_any_work(tiny_model, tmp_path, small_manifest):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(UserError, match="--load-8bit needs a CUDA GPU"):
        train(_opts(tiny_model, small_manifest, tmp_path / "r", load_8bit=True))
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        train(_opts(tiny_model, small_manifest, tmp_path / "r", precision="fp16"))
    assert not (tmp_path / "r").exists()


def test_holdout_is_the_manifest_tail_and_needs_enough_data():
    from whispertune.train.loop import split_holdout

    train_part, held = split_holdout(list(range(320)), 0.1)
    assert held == list(range(288, 320)) and train_part == list(range(288))
    train_part, held = split_holdout(list(range(50)), 0.1)  # 8 clips at least
    assert held == list(range(42, 50))
    train_part, held = split_holdout(list(range(30)), 0.1)  # 8 of 30: too much to give away
    assert held == [] and len(train_part) == 30


def test_generated_no_speech_clips_join_training(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPERTUNE_CACHE", str(tmp_path / "cache"))
    manifest = write_manifest(tmp_path / "m.jsonl", 10)
    train(_opts(tiny_model, manifest, tmp_path / "run", max_steps=3, no_speech_mix=0.2))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train_samples"] == 12  # 10 clips + 2 generated
    assert len(list((tmp_path / "cache" / "no-speech").rglob("*.flac"))) == 2


def test_adapter_scale_halves_what_training_changed(tiny_model, tmp_path):
    """best/ = base + 0.5 x (the trained checkpoint - base), in every merged weight."""
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from whispertune.train.checkpoint import latest_checkpoint

    manifest = write_manifest(tmp_path / "m.jsonl", 4)
    o = _opts(tiny_model, manifest, tmp_path / "run", max_steps=4, learning_rate=1e-2)
    assert o.lora.adapter_scale == 0.5  # the default
    result = train(o)
    trained = latest_checkpoint(tmp_path / "run")
    assert trained is not None and trained.name == "step-0000004"

    def merged(adapter: Path) -> dict[str, torch.Tensor]:
        base = WhisperForConditionalGeneration.from_pretrained(tiny_model)
        return PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()

    base = WhisperForConditionalGeneration.from_pretrained(tiny_model).state_dict()
    full, half = merged(trained), merged(result.best_dir)
    changed = [k for k in base if not torch.equal(full[k], base[k])]
    assert changed  # training moved the adapted weights
    for k in base:
        assert torch.allclose(half[k] - base[k], 0.5 * (full[k] - base[k]), atol=1e-6), k
    # the checkpoint itself stays at full scale, so a resumed run trains what it trained
    assert json.loads((trained / "adapter_config.json").read_text())["lora_alpha"] == 16
    assert json.loads((result.best_dir / "adapter_config.json").read_text())["lora_alpha"] == 8

    with pytest.raises(UserError, match="adapter-scale"):
        train(_opts(tiny_model, manifest, tmp_path / "bad", adapter_scale=1.5))


def test_training_on_from_a_scaled_best_warns(tiny_model, tmp_path, caplog):
    manifest = write_manifest(tmp_path / "m.jsonl", 4)
    first = train(_opts(tiny_model, manifest, tmp_path / "run", max_steps=2))
    with caplog.at_level("WARNING", logger="whispertune.train.model"):
        second = train(_opts(str(first.best_dir), manifest, tmp_path / "again", max_steps=1))
    assert "scales it by 0.5 again" in caplog.text
    assert json.loads((second.best_dir / "adapter_config.json").read_text())["lora_alpha"] == 4
    caplog.clear()
    with caplog.at_level("WARNING", logger="whispertune.train.model"):
        kept = train(
            _opts(str(first.best_dir), manifest, tmp_path / "kept", max_steps=1, adapter_scale=1)
        )
    assert "again" not in caplog.text
    assert json.loads((kept.best_dir / "adapter_config.json").read_text())["lora_alpha"] == 8


def test_best_is_the_average_of_the_best_and_the_newest_checkpoints(tiny_model, tmp_path):
    """With an eval set, best/ = base + 0.5 x mean(checkpoint_i - base) over the best
    checkpoint and the newest others, exactly; the run scores best/ as published."""
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    manifest = write_manifest(tmp_path / "m.jsonl", 4)
    held = write_manifest(tmp_path / "eval.jsonl", 2, start=4)
    o = _opts(
        tiny_model, manifest, tmp_path / "run", max_steps=5, learning_rate=1e-2,
        eval=held, eval_steps=1, save_total_limit=3,
    )
    assert o.lora.average_checkpoints == 3  # the default
    result = train(o)
    assert result.best_step in result.averaged_steps and len(result.averaged_steps) == 3
    assert result.published_metric is not None
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert [r["best_dir_cer"] for r in records if "best_dir_cer" in r] == [
        result.published_metric
    ]
    config = json.loads((result.best_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (24, 24)  # rank 3 x 8, alpha/r x 0.5
    # scored beside the trained adapter (no second model), with the figure best/ gets loaded
    loaded = load_transformers(str(result.best_dir))
    alone = Validator(loaded.processor, read_manifest(held), o, "cer", "cpu", OutputStyle())
    assert alone.score(loaded.model) == result.published_metric

    def merged(adapter: Path) -> dict[str, torch.Tensor]:
        base = WhisperForConditionalGeneration.from_pretrained(tiny_model)
        return PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()

    base = WhisperForConditionalGeneration.from_pretrained(tiny_model).state_dict()
    parts = [merged(tmp_path / f"run/checkpoints/step-{s:07d}") for s in result.averaged_steps]
    published = merged(result.best_dir)
    changed = [k for k in base if not torch.equal(parts[0][k], parts[-1][k])]
    assert changed  # the checkpoints differ, so the mean is not any one of them
    for k in base:
        mean = sum(p[k] - base[k] for p in parts) / len(parts)
        assert torch.allclose(published[k] - base[k], 0.5 * mean, atol=1e-6), k

    # 1: best/ is the best checkpoint alone (scaled)
    single = train(
        _opts(tiny_model, manifest, tmp_path / "one", max_steps=3, eval=held, eval_steps=1,
              average_checkpoints=1)
    )
    assert single.averaged_steps == []
    assert json.loads((single.best_dir / "adapter_config.json").read_text())["r"] == 8
