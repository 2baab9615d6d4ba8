"""CLI: ``whispertune train`` -> whispertune.train.train."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tqdm import tqdm

from whispertune import options
from whispertune.cli._progress import TqdmProgress
from whispertune.progress import Cancelled, ProgressCallback, ProgressEvent
from whispertune.train.config import TrainOptions

if TYPE_CHECKING:
    from whispertune.train.loop import TrainResult


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


_LABELS = {"encoder-cache": "encoder cache", "train": "training"}
_STOPPING = "stopping after this step; a checkpoint is saved (resume with --resume)"


def _train(args: argparse.Namespace) -> int:
    from whispertune.train import train

    opts = options.from_args(TrainOptions, args)
    if opts.optim.allocator == "auto" and getattr(args, "from_command_line", False):
        from whispertune.train.hardware import rerun_with_caching_allocator

        rerun_with_caching_allocator(sys.orig_argv[1:])  # returns where it does not restart
    # Under torchrun / accelerate launch only rank 0 draws progress and prints the result.
    # (Asking accelerate here would create its process state before the trainer configures it.)
    main_process = int(os.environ.get("RANK", "0")) == 0
    cancel = threading.Event()
    bars = TqdmProgress(_LABELS, quiet=args.quiet or not main_process)
    try:
        with _stop_on_ctrl_c(cancel, main_process):
            result = train(opts, progress=_callback(bars), cancel=cancel)
    except Cancelled as stopped:
        bars.close()
        if main_process:
            _print_stopped(stopped)
        _exit_promptly()
        return 130
    except KeyboardInterrupt:  # the second Ctrl-C: out at once, with the way back in
        bars.close()
        if main_process:
            _print_interrupted(opts)
        _exit_promptly()
        return 130
    except OSError as e:  # a full disk, a folder removed: what was saved stays resumable
        bars.close()
        print(f"error: {e}", file=sys.stderr)
        if main_process:
            _print_interrupted(opts, "stopped")
        return 1
    finally:
        bars.close()
    if main_process:
        _print_result(result, opts)
    return 0


def _exit_promptly() -> None:
    """Spare a stopped run the interpreter's closing garbage collection: it walks every object
    the libraries made (about 5 s after a tiny run on 2 busy cores, measured), which is what a
    user who pressed Ctrl-C waits through. Frozen objects are left to the OS; the process is
    about to end, and everything worth keeping (checkpoint, metrics) is on disk."""
    gc.freeze()


def _callback(bars: TqdmProgress) -> ProgressCallback:
    """Bars for the encoder cache and the steps; an evaluation is a line above the training
    bar (its own bar would close the training bar at every evaluation)."""

    def on_event(event: ProgressEvent) -> None:
        if event.stage not in ("validate", "validate-best"):
            bars(event)
        elif event.message and not bars.quiet:
            bars.write(event.message)

    return on_event


@contextlib.contextmanager
def _stop_on_ctrl_c(cancel: threading.Event, announce: bool) -> Iterator[None]:
    """The first Ctrl-C sets ``cancel`` (the run saves a checkpoint after the current step and
    stops); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return

    def on_sigint(signum, frame) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        if announce:
            tqdm.write(_STOPPING, file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_stopped(stopped: Cancelled) -> None:
    if stopped.state != "resumable":
        print(f"{stopped}: stopped before the first step; nothing to resume")
        return
    print(f"{stopped}")
    print(f"resume with: {_resume_command()}")


def _print_interrupted(opts: TrainOptions, what: str = "interrupted") -> None:
    """After a second Ctrl-C or an OS error: the newest checkpoint on disk (one being saved
    is not among them: checkpoints are renamed into place whole) and how to resume."""
    from pathlib import Path

    from whispertune.train.checkpoint import completed_checkpoints

    saved = completed_checkpoints(Path(opts.run.output))
    if not saved:
        print(f"{what} before the first checkpoint; nothing to resume")
        return
    print(f"{what}; newest checkpoint {saved[-1]}")
    print(f"resume with: {_resume_command()}")


def _resume_command() -> str:
    """This command line with --resume (the run continues with the same options)."""
    argv = sys.argv[1:]
    if "train" not in argv:
        return "the same whispertune train command with --resume"
    tail = argv[argv.index("train") + 1 :]
    resume = [] if "--resume" in tail else ["--resume"]
    return shlex.join(["whispertune", "train", *tail, *resume])


def _print_result(result: TrainResult, opts: TrainOptions) -> None:
    """The closing lines: how the run ended, the best epoch, best/ as published, where."""
    print(
        f"{result.status}: {result.steps} steps in {result.seconds / 60:.1f} min; "
        f"{result.train_samples} training samples ({result.filtered})"
    )
    metric = result.metric_name
    if result.best_metric is not None:
        print(
            f"best checkpoint (step {result.best_step}): eval {metric} "
            f"{result.best_metric * 100:.2f} %"
        )
    if result.published_metric is not None:
        made = []
        if result.averaged_steps:
            made.append("average of steps " + ", ".join(map(str, result.averaged_steps)))
        if opts.lora.adapter and opts.lora.adapter_scale != 1:
            made.append(f"adapter x{opts.lora.adapter_scale:g}")
        print(f"best/ ({'; '.join(made)}): eval {metric} {result.published_metric * 100:.2f} %")
    print(f"model: {result.best_dir}")
