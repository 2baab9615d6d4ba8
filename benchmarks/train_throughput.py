"""Training throughput: the plain transformers + peft recipe against whispertune, same model
(built-in base), data (AISHELL S0150), batch size and LoRA config, in one session.

    python benchmarks/train_throughput.py [--steps 6] [--batch-size 8] [--manifest M]

Rows: (a) transformers Seq2SeqTrainer + peft LoRA with the usual Whisper data collator,
(b) ``whispertune train`` with the same LoRA config in fp32, (b') the same in bf16 where the
CPU has native bf16, (c) ``whispertune train --lora-scope decoder`` with the encoder-output cache
(steady state, and with the one-off cache build counted over one epoch), (d) the default
recipe without joining clips (LoRA r8 on the last 4 encoder layers, on the cache of their
input, ``--pack-seconds 0``), (e) the default recipe: (d) with consecutive clips joined into
windows of up to 30 s (samples/s counts clips, not windows), (e0) the default recipe as it
was before issue 26: fp32, the top encoder layers' activations kept for backward
(``--no-recompute-encoder-layers``) and glibc's heap keeping freed activations (its mmap
threshold at the 32 MiB its dynamic threshold climbs to), (e') the default recipe as it was
until 2026-12-05 (fp32, glibc's allocator), (e'') (e) keeping every activation. The rows run
as ``whispertune train`` runs: on tcmalloc (or jemalloc) where the system has it, except
those on glibc by name (``--allocator system``); precision ``auto`` (bf16 where native)
unless named. Each runs in its own process so peak RSS is its own. Prints samples/s, peak
RSS and ratios against (a), and for (e0), (e') and (e'') against (e).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO / "src/whispertune/samples/aishell_s0150/train.jsonl"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def _peer(manifest: Path, steps: int, batch: int, out: Path) -> dict:
    """(a): what users copy today (HF blog recipe + peft), features computed on the fly."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
        WhisperForConditionalGeneration,
    )

    from whispertune.audio import load_audio
    from whispertune.data.manifest import read_manifest
    from whispertune.models.loading import load_processor
    from whispertune.models.sources import resolve

    source = resolve("builtin:base")
    processor = load_processor(source)
    processor.tokenizer.set_prefix_tokens(language="zh", task="transcribe")
    samples = read_manifest(manifest)[: steps * batch + batch]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            s = samples[i]
            feats = processor.feature_extractor(load_audio(s.audio_path), sampling_rate=16000)
            return {
                "input_features": feats.input_features[0],
                "labels": processor.tokenizer(s.sentence).input_ids,
            }

    class Collator:  # the collator of the Hugging Face Whisper fine-tuning blog
        def __call__(self, features):
            inputs = [{"input_features": f["input_features"]} for f in features]
            batch_ = processor.feature_extractor.pad(inputs, return_tensors="pt")
            labels_batch = processor.tokenizer.pad(
                [{"input_ids": f["labels"]} for f in features], return_tensors="pt"
            )
            labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
            if (
                labels[:, 0] == processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
            ).all():
                labels = labels[:, 1:]
            batch_["labels"] = labels
            return batch_

    model = WhisperForConditionalGeneration.from_pretrained(source.hf_dir(), dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=LORA_TARGETS)
    )
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    trainer = Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(
            output_dir=str(out),
            per_device_train_batch_size=batch,
            learning_rate=1e-3,
            max_steps=steps + 1,
            warmup_steps=0,
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
            label_names=["labels"],
            dataloader_num_workers=0,
            use_cpu=True,
        ),
        train_dataset=DS(),
        data_collator=Collator(),
        callbacks=[Clock()],
    )
    trainer.train()
    return {"samples_per_s": steps * batch / (times[-1] - times[0])}  # first step is warm-up


def _ours(manifest: Path, steps: int, batch: int, out: Path, extra: list[str]) -> dict:
    from whispertune import options
    from whispertune.progress import ProgressEvent
    from whispertune.train import TrainOptions, train

    values = {
        "train": manifest,
        "output": out,
        "language": "Chinese",
        "batch_size": batch,
        "max_steps": steps + 1,
        "warmup_steps": 0,
        "num_workers": 0,
        "log_steps": 1000,
        "save_steps": 10**6,
    }
    for item in extra:
        key, _, value = item.partition("=")
        values[key] = value
    times: list[float] = []
    cache = {"start": None, "end": None}

    def progress(event: ProgressEvent) -> None:
        if event.stage == "train" and event.done == 0:  # training starts
            times.clear()
        elif event.stage == "train":
            times.append(time.perf_counter())
        elif event.stage == "encoder-cache" and event.done > 0:
            cache["start"] = cache["start"] or time.perf_counter()
            cache["end"] = time.perf_counter()

    result = train(options.build(TrainOptions, values), progress=progress)
    run = json.loads((out / "run.json").read_text())
    clips_per_sample = run["train_clips"] / run["train_samples"]  # > 1 with --pack-seconds
    out_ = {"samples_per_s": clips_per_sample * steps * batch / (times[-1] - times[0])}
    if cache["start"] is not None:
        out_["cache_seconds_per_clip"] = (cache["end"] - cache["start"]) / result.train_samples
    return out_


def worker(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if args.worker == "peer":
            r = _peer(args.manifest, args.steps, args.batch_size, Path(tmp))
        else:
            r = _ours(
                args.manifest,
                args.steps,
                args.batch_size,
                Path(tmp) / "run",
                args.worker.split(",")[1:],
            )
    r["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(r))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per row")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--rows",
        nargs="*",
        default=None,
        help="only these rows, e.g. a d e (e0 and e' bring e; without a, no ratios to it)",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from whispertune.train.hardware import caching_allocator_env, cpu_has_bf16

    # the peer's LoRA config and data: every clip trained, no hold-out, no generated clips
    same = "ours,lora_scope=all,lora_r=32,lora_alpha=64,holdout=0,no_speech_mix=0"
    rows = [
        ("(a) Seq2SeqTrainer + peft LoRA (fp32)", "peer"),
        ("(b) whispertune train, LoRA (fp32)", same + ",precision=fp32"),
    ]
    if cpu_has_bf16():
        rows.append(("(b') whispertune train, LoRA (bf16)", same + ",precision=bf16"))
    rows.append(
        (
            "(c) whispertune, decoder LoRA + encoder cache",
            "ours,lora_scope=decoder,encoder_layers=0,lora_r=32,lora_alpha=64,holdout=0,"
            "no_speech_mix=0",
        )
    )
    rows.append(("(d) the defaults, one clip per window", "ours,pack_seconds=0"))
    rows.append(("(e) whispertune train defaults (recipe)", "ours"))
    rows.append(
        (
            "(e0) (e) as before issue 26",
            "ours,precision=fp32,allocator=system,recompute_encoder_layers=false",
        )
    )
    rows.append(
        ("(e') (e) in fp32 on glibc (until 2026-12-05)", "ours,precision=fp32,allocator=system")
    )
    rows.append(("(e'') (e) without recomputing", "ours,recompute_encoder_layers=false"))
    if args.rows:
        wanted = {f"({r.strip('()')})" for r in args.rows}
        if wanted & {"(e0)", "(e')", "(e'')"}:
            wanted.add("(e)")  # their ratios are against it
        rows = [r for r in rows if r[0].split()[0] in wanted]
    results = []
    for name, spec in rows:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            spec,
            "--manifest",
            str(args.manifest),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
        ]
        env = dict(os.environ)
        if "allocator=system" not in spec:  # as `whispertune train` restarts itself
            env = caching_allocator_env(env) or env
        if name.startswith("(e0)"):  # glibc's heap as it was: large freed blocks kept
            env["MALLOC_MMAP_THRESHOLD_"] = str(32 << 20)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        results.append((name, json.loads(line[7:])))
    # without (a) (its 10 GB do not fit beside other jobs), ratios against it are left out
    peer = results[0][1] if results and results[0][0].startswith("(a)") else None
    recipe = next((r for name, r in results if name.startswith("(e) ")), None)
    print(
        f"built-in base, batch {args.batch_size}, {args.steps} timed steps, "
        f"{os.cpu_count()} CPU threads, LoRA r=32 on {','.join(LORA_TARGETS)} "
        "(d, e: the defaults, r=8 on the last 4 encoder layers)"
    )
    print(f"| {'runner':46s} | samples/s | x (a) | peak RSS GiB | x (a) |")
    print(f"|{'-' * 48}|-----------|-------|--------------|-------|")
    for name, r in results:
        speed = f"{r['samples_per_s'] / peer['samples_per_s']:5.2f}" if peer else "    -"
        memory = f"{r['peak_rss_gib'] / peer['peak_rss_gib']:5.2f}" if peer else "    -"
        print(
            f"| {name:46s} | {r['samples_per_s']:9.2f} | {speed} "
            f"| {r['peak_rss_gib']:12.2f} | {memory} |"
        )
        if name.startswith(("(e0)", "(e')", "(e'')")) and recipe is not None:
            print(
                f"| {'   ... against (e)':46s} | {'':9s} | "
                f"{r['samples_per_s'] / recipe['samples_per_s']:5.2f} | {'':12s} | "
                f"{r['peak_rss_gib'] / recipe['peak_rss_gib']:5.2f} |"
            )
        if "cache_seconds_per_clip" in r:
            per_epoch = 1 / (1 / r["samples_per_s"] + r["cache_seconds_per_clip"])
            speed = f"{per_epoch / peer['samples_per_s']:5.2f}" if peer else "    -"
            print(
                f"| {'   ... cache build counted over one epoch':46s} | {per_epoch:9.2f} | "
                f"{speed} |              |       |"
            )


if __name__ == "__main__":
    main()
