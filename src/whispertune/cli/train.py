"""CLI: ``whispertune train`` -> whispertune.train.train."""

from __future__ import annotations

import argparse
import os

from tqdm import tqdm

from whispertune import options
from whispertune.train.config import TrainOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune with LoRA, AdaLoRA or full training (resumable, multi-process)",
        description="Fine-tune a Whisper model on a manifest. Progress bar with loss and "
        "learning rate; metrics in OUTPUT/metrics.jsonl and OUTPUT/tensorboard; checkpoints in "
        "OUTPUT/checkpoints (atomic, pruned); the best model by CER/WER on --eval (or on "
        "the --holdout part of --train) in OUTPUT/best, loadable by every command. "
        "Multi-process: run the same command under "
        "'torchrun --nproc_per_node N -m whispertune train ...' or "
        "'accelerate launch -m whispertune train ...'. The defaults are a recipe measured "
        "on half an hour of one speaker (docs/fine-tuning-recipe.md): LoRA r8 on the last 4 "
        "encoder layers only (the rest of the encoder is frozen and its output cached; the "
        "decoder is left as it is), consecutive clips joined into windows of up to 30 s "
        "(half of them trained with timestamps, as long-form transcription decodes), "
        "lr 2e-4, 6 epochs, the best epoch by CER/WER on --eval "
        "or on the last 10% of --train. When the transcripts write Mandarin numbers in "
        "characters (四千万, as AISHELL does) and never in digits, the model records it "
        "(best/output_style.json) and writes its numbers that way at inference.",
    )
    options.add_options(p, TrainOptions, config_file=True)
    p.set_defaults(func=_train)


class _Bar:
    """Turns training events into a tqdm bar (main process only)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.cache: tqdm | None = None

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "cache":
            if self.cache is None:
                self.cache = tqdm(total=event["total"], desc="encoder cache", unit="clip")
            self.cache.update(event["done"] - self.cache.n)
        elif kind == "start":
            if self.cache is not None:
                self.cache.close()
            self.bar = tqdm(total=event["total_steps"], initial=event["step"], desc="training",
                            unit="step", dynamic_ncols=True)
        elif kind == "step" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2e}")
        elif kind == "eval" and self.bar is not None and event.get("published"):
            self.bar.write(f"best/ as published: eval {event['metric']} "
                           f"{event['value'] * 100:.2f} %")
        elif kind == "eval" and self.bar is not None:
            self.bar.write(f"step {event['step']}: eval {event['metric']} "
                           f"{event['value'] * 100:.2f} % (best {event['best'] * 100:.2f} %)")
        elif kind == "end" and self.bar is not None:
            self.bar.close()


def _train(args: argparse.Namespace) -> int:
    from whispertune.train import train

    opts = options.from_args(TrainOptions, args)
    # Under torchrun / accelerate launch only rank 0 draws progress and prints the result.
    # (Asking accelerate here would create its process state before the trainer configures it.)
    main_process = int(os.environ.get("RANK", "0")) == 0
    result = train(opts, progress=_Bar() if main_process else None)
    if main_process:
        print(f"{result.status}: {result.steps} steps in {result.seconds / 60:.1f} min; "
              f"{result.train_samples} training samples ({result.filtered})")
        if result.best_metric is not None:
            metric = result.metric_name
            print(f"best checkpoint (step {result.best_step}): eval {metric} "
                  f"{result.best_metric * 100:.2f} %")
        if result.published_metric is not None:
            made = []
            if result.averaged_steps:
                made.append("average of steps " + ", ".join(map(str, result.averaged_steps)))
            if opts.method != "full" and opts.adapter_scale != 1:
                made.append(f"adapter x{opts.adapter_scale:g}")
            print(f"best/ ({'; '.join(made)}): eval {result.metric_name} "
                  f"{result.published_metric * 100:.2f} %")
        print(f"model: {result.best_dir}")
    return 0
