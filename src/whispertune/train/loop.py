"""The training loop: one loop for LoRA, AdaLoRA and full fine-tuning, single- or multi-process.

accelerate makes the same code run under ``python``, ``torchrun --nproc_per_node N`` and
``accelerate launch`` (DDP over gloo on CPU, NCCL on GPUs). The loop owns checkpointing and
resume, so an interrupted run continues exactly: model, optimizer, scheduler, RNG, AdaLoRA
state and the position in the epoch's batch order are all restored.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from whispertune import options as opts
from whispertune.data.manifest import Sample
from whispertune.errors import UserError
from whispertune.output_style import OutputStyle, apply_style, style_of_manifest
from whispertune.train import checkpoint as ckpt
from whispertune.train.config import TrainOptions
from whispertune.train.dataset import (
    SpeechDataset,
    collate,
    epoch_batches,
    filter_samples,
    label_length,
    load_checked_manifest,
    rank_batches,
    steps_per_epoch,
)
from whispertune.train.hardware import return_freed_activations_to_the_os
from whispertune.train.labels import MAX_TIMESTAMP, SpecialTokens
from whispertune.train.model import build_model, check_hardware, run_top_encoder, top_encoder
from whispertune.train.packing import pack_samples

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
_RUN_FILES = (
    "run.json",
    "metrics.jsonl",
    ckpt.LATEST,
    ckpt.CHECKPOINTS,
    ckpt.BEST,
    "cache",
    "tensorboard",
)


@dataclass
class TrainResult:
    run_dir: Path
    best_dir: Path
    steps: int
    best_metric: float | None
    metric_name: str | None
    status: str  # "finished" | "cancelled" | "early-stopped"
    train_samples: int
    filtered: str
    seconds: float
    best_step: int | None = None
    averaged_steps: list[int] = field(default_factory=list)  # best/ = their adapters' mean
    published_metric: float | None = None  # best/ as published (averaged, scaled), on --eval


def _prepare_run_dir(run_dir: Path, options: TrainOptions, is_main: bool) -> Path | None:
    """Refuse to mix runs; returns the checkpoint to resume from, if any."""
    occupied = run_dir.exists() and any(run_dir.iterdir())
    latest = ckpt.latest_checkpoint(run_dir) if run_dir.exists() else None
    if options.resume:
        if latest is None:
            logger.warning(
                "--resume: no checkpoint in %s yet; starting from the beginning", run_dir
            )
        return latest
    if occupied and not options.force:
        raise UserError(
            f"{run_dir}: already holds files (another run?); pass --resume to continue it or "
            "--force to start over (its checkpoints and metrics are deleted)"
        )
    if occupied and is_main:
        for name in _RUN_FILES:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    return None


class Trainer:
    """Holds the state of one run; ``run()`` trains. Built by :func:`train`."""

    def __init__(
        self, options: TrainOptions, progress: ProgressFn | None, cancel: threading.Event | None
    ) -> None:
        from accelerate import Accelerator

        check_hardware(options)
        self.o = options
        self.progress = progress or (lambda event: None)
        self.cancel = cancel
        if options.threads:
            torch.set_num_threads(options.threads)
        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[options.precision]
        self.acc = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
        self.is_main = self.acc.is_main_process
        self.run_dir = Path(options.output)
        torch.manual_seed(options.seed)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        o = self.o
        resume_from = _prepare_run_dir(self.run_dir, o, self.is_main)
        self.acc.wait_for_everyone()
        self.run_dir.mkdir(parents=True, exist_ok=True)

        if o.encoder_layers and not o.encoder_frozen():  # given explicitly
            raise UserError(
                "--encoder-layers N trains the last N encoder layers of an otherwise frozen "
                "encoder: use it with --lora-scope encoder or decoder (LoRA) or --freeze-encoder "
                "(full)"
            )
        if o.pack_seconds > MAX_TIMESTAMP:
            raise UserError(f"--pack-seconds {o.pack_seconds}: at most {MAX_TIMESTAMP:g} s")
        if not 0 < o.adapter_scale <= 1:
            raise UserError(
                f"--adapter-scale {o.adapter_scale:g}: give a value in (0, 1] "
                "(1 keeps the adapter as trained)"
            )
        samples = load_checked_manifest(o.train)
        self.eval_samples = load_checked_manifest(o.eval) if o.eval else []
        self.holdout_count = 0
        if not o.eval and o.holdout > 0:
            samples, self.eval_samples = split_holdout(samples, o.holdout)
            self.holdout_count = len(self.eval_samples)
            if self.eval_samples:
                logger.info(
                    "no --eval: the last %d clips of %s are held out to choose the best "
                    "checkpoint (--holdout %g)",
                    len(self.eval_samples),
                    o.train,
                    o.holdout,
                )
        if o.eval_limit:
            self.eval_samples = self.eval_samples[: o.eval_limit]

        if o.no_speech_mix > 0:
            from whispertune.models.cache import cache_dir
            from whispertune.train.no_speech import no_speech_samples

            count = round(o.no_speech_mix * len(samples))
            samples = samples + no_speech_samples(count, cache_dir("no-speech"), samples)
        world = self.acc.num_processes
        # Tokenizer first (cheap), to filter and size the schedule before loading the model.
        from whispertune.models.loading import load_processor
        from whispertune.models.sources import resolve

        processor = load_processor(resolve(o.model))
        tokenizer = processor.tokenizer
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        self.samples, self.lengths, durations, self.filter_report = filter_samples(
            samples, o, tokenizer, self.special
        )
        logger.info("training data: %s", self.filter_report.summary())
        for example in self.filter_report.examples:
            logger.info("  left out: %s", example)
        if not self.samples:
            raise UserError(
                f"{o.train}: no sample left after filtering ({self.filter_report.summary()})"
            )
        self.clip_count = len(self.samples)
        self.output_style = _manifest_style(self.samples, o.language)
        if not self.output_style.is_plain():
            logger.info(
                "the training transcripts write Mandarin numbers in characters: the model "
                "will too (output_style.json; --numerals keep at inference turns it off)"
            )
        if o.pack_seconds > 0:
            self._pack(tokenizer, durations)
        self.steps_per_epoch = steps_per_epoch(len(self.samples), o.batch_size, world, o.grad_accum)
        self.total_steps = o.max_steps or max(1, math.ceil(o.total_epochs() * self.steps_per_epoch))
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        loaded = build_model(o, self.total_steps)
        self.processor = loaded.processor
        model = loaded.model
        self.top_layers = o.trained_encoder_layers(loaded.model.config.encoder_layers)
        self.is_peft = hasattr(model, "peft_config")
        if self.is_peft:  # record the spec the user gave, so the adapter resolves anywhere
            base = o.model
            if Path(base).expanduser().exists():
                base = str(Path(base).expanduser().resolve())
            for cfg in model.peft_config.values():
                cfg.base_model_name_or_path = base

        self.dataset = SpeechDataset(
            self.samples, self.processor.feature_extractor, tokenizer, self.special, o, train=True
        )
        self.use_cache = o.encoder_cache and o.encoder_frozen() and not o.augmenting()
        if self.use_cache:
            self.train_data = self._encoder_cache(model)
        else:
            self.train_data = self.dataset
            # full-encoder steps: activations of GBs a step, which glibc's heap would keep
            return_freed_activations_to_the_os()
            if o.encoder_cache and o.encoder_frozen() and o.augmenting():
                logger.info("encoder cache off: augmentation changes the encoder's input")

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.peak_lr(), weight_decay=o.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            "constant_with_warmup" if o.scheduler == "constant" else o.scheduler,
            optimizer,
            num_warmup_steps=min(o.warmup_steps, self.total_steps // 2),
            num_training_steps=self.total_steps,
        )
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.state = ckpt.TrainerState()
        if resume_from is not None:
            self._restore(resume_from)
        if self.is_main:
            (self.run_dir / "run.json").write_text(
                json.dumps(
                    {
                        "options": opts.to_dict(o),
                        "world_size": world,
                        "total_steps": self.total_steps,
                        "steps_per_epoch": self.steps_per_epoch,
                        "train_samples": len(self.samples),
                        "train_clips": self.clip_count,
                        "filtered": self.filter_report.summary(),
                        "encoder_cache": self.use_cache,
                        "trained_encoder_layers": self.top_layers,
                        "holdout_clips": self.holdout_count,
                    },
                    indent=1,
                    default=str,
                ),
                encoding="utf-8",
            )
        self.metric_name = self._metric_name()
        self.writer = None
        if self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(
                    str(self.run_dir / "tensorboard"), purge_step=self.state.step + 1 or None
                )
            except ImportError:
                logger.info("tensorboard not installed: metrics go to metrics.jsonl only")

    def _pack(self, tokenizer, durations: list[float]) -> None:
        """Join consecutive clips into windows of up to --pack-seconds (see packing.py)."""
        o = self.o
        packed = pack_samples(
            self.samples,
            durations,
            self.lengths,
            o.pack_seconds,
            o.max_label_tokens,
            o.seed,
            max_pause=o.pack_pause,
        )
        self.lengths = [label_length(s, o, tokenizer, self.special) for s in packed]
        logger.info(
            "%d clips joined into %d training windows of up to %g s (--pack-seconds), %s",
            len(self.samples),
            len(packed),
            o.pack_seconds,
            f"up to {o.pack_pause:g} s of silence between clips (--pack-pause)"
            if o.pack_pause > 0
            else "clips back to back",
        )
        self.samples = packed

    def _encoder_cache(self, model):
        from whispertune.models.sources import resolve
        from whispertune.train.encoder_cache import (
            CachedDataset,
            EncoderCache,
            build_encoder_cache,
            cache_key,
        )

        encoder = model.get_encoder()
        key = cache_key(
            resolve(self.o.model).hf_dir(),
            self.samples,
            self.processor.feature_extractor.feature_size,
            self.top_layers,
        )
        # Shared across runs (the key covers model, clips and mel settings): experiments on the
        # same data pay for the encoder once.
        from whispertune.models.cache import cache_dir

        directory = cache_dir("encoder")
        if self.is_main:
            self.progress({"kind": "status", "message": "computing encoder outputs (once)"})
            cache = build_encoder_cache(
                encoder,
                self.dataset,
                directory,
                key,
                progress=lambda d, n: self.progress({"kind": "cache", "done": d, "total": n}),
                trained_layers=self.top_layers,
            )
        self.acc.wait_for_everyone()
        if not self.is_main:
            cache = EncoderCache(
                directory / f"encoder-{key}.f16",
                len(self.dataset),
                encoder.config.max_source_positions,
                encoder.config.d_model,
            )
        return CachedDataset(self.dataset, cache)

    def _metric_name(self) -> str | None:
        if not self.eval_samples:
            return None
        from whispertune.evaluate import _choose_metric

        return _choose_metric(self.o.metric, self.eval_samples, self.o.language)

    # ------------------------------------------------------------- resume
    def _restore(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        state, blob = ckpt.load_training_state(checkpoint)
        model = self.acc.unwrap_model(self.model)
        if self.is_peft:
            from peft import set_peft_model_state_dict

            weights = load_file(str(checkpoint / "adapter_model.safetensors"))
            set_peft_model_state_dict(model, weights)
            extra = blob.get("extra", {})
            if "adalora" in extra:
                allocator = model.base_model.rankallocator
                for k, v in extra["adalora"]["allocator"].items():
                    setattr(allocator, k, v)
                model.peft_config["default"].rank_pattern = extra["adalora"]["rank_pattern"]
        else:
            from transformers.modeling_utils import load_sharded_checkpoint

            if (checkpoint / "model.safetensors").is_file():
                missing, unexpected = model.load_state_dict(
                    load_file(str(checkpoint / "model.safetensors")), strict=False
                )
                missing = [m for m in missing if m != "proj_out.weight"]
                if missing or unexpected:
                    raise UserError(f"{checkpoint}: weights do not match the model")
            else:
                load_sharded_checkpoint(model, str(checkpoint))
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        ckpt.set_rng_state(blob["rng"])
        self.state = state
        self._truncate_metrics(state.step)
        logger.info(
            "resumed from %s (step %d, epoch %d, batch %d)",
            checkpoint.name,
            state.step,
            state.epoch,
            state.batch_in_epoch,
        )

    def _truncate_metrics(self, step: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return
        keep = [
            line
            for line in path.read_text("utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def _adalora_extra(self) -> dict[str, Any]:
        model = self.acc.unwrap_model(self.model)
        if self.o.method != "adalora":
            return {}
        allocator = model.base_model.rankallocator
        return {
            "adalora": {
                "allocator": {
                    k: getattr(allocator, k) for k in ("ipt", "exp_avg_ipt", "exp_avg_unc")
                },
                "rank_pattern": model.peft_config["default"].rank_pattern,
            }
        }

    # ------------------------------------------------------------- steps
    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = self.acc.device
        kwargs: dict[str, Any] = {"decoder_input_ids": batch["decoder_input_ids"].to(device)}
        with self.acc.autocast():
            if "encoder_hidden" in batch:
                hidden = batch["encoder_hidden"].to(device)
                if self.top_layers:
                    encoder = top_encoder(self.acc.unwrap_model(self.model))
                    hidden = run_top_encoder(encoder, hidden, self.top_layers)
                kwargs["encoder_outputs"] = (hidden,)
            else:
                kwargs["input_features"] = batch["input_features"].to(device)
            logits = self.model(**kwargs).logits
        labels = batch["labels"].to(device)
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
            label_smoothing=self.o.label_smoothing,
        )
        if self.o.method == "adalora":
            loss = loss + adalora_orthogonal_penalty(self.acc.unwrap_model(self.model))
        return loss

    def _loader(self, epoch: int, skip: int):
        o = self.o
        self.train_data.epoch = epoch
        batches = rank_batches(
            epoch_batches(self.lengths, o.batch_size, o.seed, epoch),
            self.acc.process_index,
            self.acc.num_processes,
            o.grad_accum,
        )
        pad = self.special.eot
        return batches, torch.utils.data.DataLoader(
            self.train_data,
            batch_sampler=batches[skip:],
            collate_fn=functools.partial(collate, pad_id=pad, sot=self.special.sot),
            num_workers=o.num_workers if o.num_workers > 0 else 0,
            persistent_workers=False,
            # a private generator: worker seeds must not draw from the global RNG (dropout's),
            # or a resumed run would diverge from the uninterrupted one
            generator=torch.Generator().manual_seed(o.seed * 1000 + epoch),
        )

    def run(self) -> TrainResult:
        o = self.o
        start = time.perf_counter()
        status = "finished"
        self.model.train()
        window_loss, window_n, window_t, window_samples = 0.0, 0, time.perf_counter(), 0
        eval_every = o.eval_steps or self.steps_per_epoch
        save_every = o.save_steps or self.steps_per_epoch
        saved_at = -1
        self.progress(
            {
                "kind": "start",
                "total_steps": self.total_steps,
                "step": self.state.step,
                "train_samples": len(self.samples),
                "filtered": self.filter_report.summary(),
            }
        )
        while self.state.step < self.total_steps and status == "finished":
            epoch = self.state.epoch
            batches, loader = self._loader(epoch, self.state.batch_in_epoch)
            micro = 0
            for batch in loader:
                sync = (self.state.batch_in_epoch + 1) % o.grad_accum == 0
                ctx = contextlib.nullcontext() if sync else self.acc.no_sync(self.model)
                with ctx:
                    loss = self._loss(batch)
                    self.acc.backward(loss / o.grad_accum)
                window_loss += float(loss.detach())
                window_n += 1
                window_samples += len(batch["labels"]) * self.acc.num_processes
                self.state.batch_in_epoch += 1
                micro += 1
                if not sync:
                    continue
                if o.max_grad_norm:
                    self.acc.clip_grad_norm_(self.model.parameters(), o.max_grad_norm)
                self.optimizer.step()
                if o.method == "adalora":
                    self.acc.unwrap_model(self.model).base_model.update_and_allocate(
                        self.state.step
                    )
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                step = self.state.step
                if step % o.log_steps == 0 or step == self.total_steps:
                    elapsed = time.perf_counter() - window_t
                    record = {
                        "step": step,
                        "epoch": round(epoch + self.state.batch_in_epoch / max(1, len(batches)), 3),
                        "loss": window_loss / max(1, window_n),
                        "lr": self.scheduler.get_last_lr()[0],
                        "samples_per_s": window_samples / max(elapsed, 1e-9),
                    }
                    self._log(record)
                    window_loss, window_n, window_t, window_samples = 0.0, 0, time.perf_counter(), 0
                self.progress(
                    {
                        "kind": "step",
                        "step": step,
                        "total_steps": self.total_steps,
                        "loss": float(loss.detach()),
                        "lr": self.scheduler.get_last_lr()[0],
                        "epoch": epoch,
                    }
                )
                end_of_epoch = self.state.batch_in_epoch >= len(batches)
                if end_of_epoch:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
                last = step >= self.total_steps
                if self.eval_samples and (step % eval_every == 0 or last):
                    improved = self._evaluate()
                    window_t = time.perf_counter()  # throughput excludes evaluation time
                    saved_at = self._save()
                    if improved and self.is_main:
                        ckpt.publish_best(
                            self.run_dir,
                            self._checkpoint_dir(step),
                            self.processor,
                            o.adapter_scale,
                        )
                    if (
                        o.early_stopping_patience is not None
                        and self.state.evals_without_improvement >= o.early_stopping_patience
                    ):
                        status = "early-stopped"
                elif step % save_every == 0 or last:
                    saved_at = self._save()
                if self.cancel is not None and self.cancel.is_set():
                    if saved_at != step:
                        saved_at = self._save()
                    status = "cancelled"
                if last or status != "finished" or end_of_epoch:
                    break
            if micro == 0 and self.state.batch_in_epoch >= len(batches):
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
        if saved_at != self.state.step:
            self._save()
        best = self.run_dir / ckpt.BEST
        published_metric, averaged = None, []
        if self.is_main and (not self.eval_samples or not best.exists()):
            ckpt.publish_best(
                self.run_dir, self._checkpoint_dir(self.state.step), self.processor, o.adapter_scale
            )
        elif self.is_main and status != "cancelled":
            averaged = self._publish_average()
            if averaged or (o.method != "full" and o.adapter_scale != 1):
                published_metric = self._evaluate_published(best)
        self.acc.wait_for_everyone()
        if self.writer is not None:
            self.writer.close()
        self.progress({"kind": "end", "status": status, "step": self.state.step})
        return TrainResult(
            run_dir=self.run_dir,
            best_dir=best,
            steps=self.state.step,
            best_metric=self.state.best_metric,
            metric_name=self.metric_name,
            status=status,
            train_samples=len(self.samples),
            filtered=self.filter_report.summary(),
            seconds=time.perf_counter() - start,
            best_step=self.state.best_step,
            averaged_steps=[int(p.name.split("-")[1]) for p in averaged],
            published_metric=published_metric,
        )

    # ------------------------------------------------------- eval, save, log
    def _checkpoint_dir(self, step: int) -> Path:
        return self.run_dir / ckpt.CHECKPOINTS / f"step-{step:07d}"

    def _save(self) -> int:
        self.acc.wait_for_everyone()
        if self.is_main:
            ckpt.save_checkpoint(
                self.run_dir,
                self.state,
                self.acc.unwrap_model(self.model),
                self.optimizer,
                self.scheduler,
                extra=self._adalora_extra(),
                keep=self.o.save_total_limit,
                style=self.output_style,
            )
        self.acc.wait_for_everyone()
        return self.state.step

    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        logger.info(
            "step %d: %s",
            record["step"],
            ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if k != "step" and isinstance(v, float)
            ),
        )
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, record["step"])

    def _score(self, model) -> float:
        """The eval set's CER/WER for ``model``, decoded as the run's evaluations decode."""
        return evaluate_model(
            model,
            self.processor,
            self.eval_samples,
            self.o,
            self.metric_name,
            device=self.acc.device,
            style=self.output_style,
        )

    def _evaluate(self) -> bool:
        """Score the eval set with generate (rank 0); True when the metric improved."""
        improved = False
        if self.is_main:
            self.progress({"kind": "status", "message": "evaluating"})
            t = time.perf_counter()
            rate = self._score(self.acc.unwrap_model(self.model))
            self.model.train()
            s = self.state
            improved = s.best_metric is None or rate < s.best_metric
            if improved:
                s.best_metric, s.best_step = rate, s.step
                s.evals_without_improvement = 0
            else:
                s.evals_without_improvement += 1
            record = {
                "step": s.step,
                f"eval_{self.metric_name}": rate,
                "eval_seconds": time.perf_counter() - t,
            }
            s.history.append(record)
            self._log(record)
            self.progress(
                {
                    "kind": "eval",
                    "step": s.step,
                    "metric": self.metric_name,
                    "value": rate,
                    "best": s.best_metric,
                }
            )
        improved = bool(self._broadcast(improved))
        return improved

    def _publish_average(self) -> list[Path]:
        """Publish best/ as the average of the best checkpoint's adapter and the newest other
        checkpoints' (``--average-checkpoints``); the checkpoints used, or [] when it was not
        averaged (see :func:`checkpoint.average_adapters` for why)."""
        o = self.o
        if o.average_checkpoints <= 1 or self.state.best_step is None:
            return []
        if o.method != "lora":
            logger.info("--average-checkpoints: LoRA only; best/ is the best %s epoch", o.method)
            return []
        best_ckpt = self._checkpoint_dir(self.state.best_step)
        newest_first = reversed(ckpt.completed_checkpoints(self.run_dir))
        others = [p for p in newest_first if p != best_ckpt][: o.average_checkpoints - 1]
        if len(others) < o.average_checkpoints - 1:
            logger.warning(
                "--average-checkpoints %d: only %d checkpoint(s) besides the best are kept "
                "(raise --save-total-limit); averaging %d",
                o.average_checkpoints,
                len(others),
                len(others) + 1,
            )
        if not others or not best_ckpt.is_dir():
            return []
        made_of = ckpt.publish_best(
            self.run_dir, best_ckpt, self.processor, o.adapter_scale, average_with=others
        )
        # publish_best leaves best/ unaveraged where the identity does not hold (DoRA, ...)
        return sorted(made_of) if len(made_of) > 1 else []

    def _evaluate_published(self, best: Path) -> float:
        """Score best/ as users will load it (averaged and scaled), so the figure the run
        reports is the published model's, not only the full-scale best epoch's."""
        from whispertune.models.loading import load_transformers

        self.progress({"kind": "status", "message": "evaluating best/"})
        t = time.perf_counter()
        # a second copy of the model: in the training precision on a GPU, where memory is short
        dtype = self.o.precision if self.acc.device.type == "cuda" else "fp32"
        loaded = load_transformers(str(best), dtype=dtype, device=str(self.acc.device))
        rate = self._score(loaded.model)
        del loaded
        if self.acc.device.type == "cuda":
            torch.cuda.empty_cache()
        record = {
            "step": self.state.step,
            f"best_dir_{self.metric_name}": rate,
            "eval_seconds": time.perf_counter() - t,
        }
        self._log(record)
        self.progress(
            {"kind": "eval", "step": self.state.step, "metric": self.metric_name,
             "value": rate, "best": self.state.best_metric, "published": True}
        )
        return rate

    def _broadcast(self, value: Any) -> Any:
        if self.acc.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value, self.state]
        broadcast_object_list(box, from_process=0)
        self.state = box[1] if not self.is_main else self.state
        return box[0]


def split_holdout(samples: list, fraction: float) -> tuple[list, list]:
    """The last ``fraction`` of ``samples`` (8 to 300 clips) as a validation set; none when
    that would leave fewer than 4 times as many for training."""
    count = min(300, max(8, round(len(samples) * fraction)))
    if len(samples) < 5 * count:
        logger.warning(
            "only %d training clips: no validation hold-out; the last checkpoint is kept "
            "(give --eval to choose the best by CER/WER)",
            len(samples),
        )
        return samples, []
    return samples[:-count], samples[-count:]


def adalora_orthogonal_penalty(model) -> torch.Tensor:
    """AdaLoRA's orthogonality regularizer on P and Q (peft adds it only when the model computes
    the loss itself; this loop computes the loss, so it adds it here)."""
    config = model.peft_config["default"]
    total, count = 0.0, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad and p.numel():
            cov = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
            total = total + torch.norm(cov - eye, p="fro")
            count += 1
    return config.orth_reg_weight * total / max(1, count)


@torch.inference_mode()
def evaluate_model(
    model,
    processor,
    samples,
    options: TrainOptions,
    metric: str,
    device=None,
    style: OutputStyle | None = None,
) -> float:
    """CER/WER of ``model`` on ``samples`` with greedy (or beam) ``generate``, its output in
    the model's ``style`` as inference will write it."""
    from whispertune.audio import load_audio
    from whispertune.evaluate import score_pairs
    from whispertune.languages import language_code
    from whispertune.text import normalize

    was_training = model.training
    model.eval()
    refs, hyps = [], []
    english = metric == "wer"
    dtype = next(model.parameters()).dtype
    # Room for twice the longest reference: enough to see hallucinated repetition, without
    # letting an untrained model babble 224 tokens per clip.
    longest = max(
        len(processor.tokenizer.encode(s.text, add_special_tokens=False)) for s in samples
    )
    max_new = int(min(224, max(32, 2 * longest + 8)))
    by_lang: dict[str | None, list] = {}
    for s in samples:
        by_lang.setdefault(s.language or options.language, []).append(s)
    for lang, group in by_lang.items():
        for i in range(0, len(group), options.eval_batch_size):
            chunk = group[i : i + options.eval_batch_size]
            audios = [load_audio(s.audio_path, s.start_time, s.end_time) for s in chunk]
            feats = processor.feature_extractor(
                audios, sampling_rate=16000, return_tensors="pt"
            ).input_features
            kwargs: dict[str, Any] = {"task": options.task}
            code = language_code(lang) if lang else None
            if code:
                kwargs["language"] = code
            out = model.generate(
                input_features=feats.to(device or "cpu", dtype),
                num_beams=options.eval_beam_size,
                max_new_tokens=max_new,
                do_sample=False,
                **kwargs,
            )
            texts = processor.tokenizer.batch_decode(out, skip_special_tokens=True)
            for s, text in zip(chunk, texts, strict=True):
                refs.append(normalize(s.text, english=english))
                hyps.append(normalize(apply_style(text, code, style or OutputStyle()),
                                      english=english))
    if was_training:
        model.train()
    subs, dels, ins, n, _ = score_pairs(refs, hyps, metric)
    return (subs + dels + ins) / max(1, n)


def train(
    options: TrainOptions,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Fine-tune per ``options``; ``progress`` receives events (dicts with a "kind": start,
    status, cache, step, eval, end) and ``cancel`` stops after the current step with a
    checkpoint that ``resume`` continues."""
    trainer = Trainer(options, progress, cancel)
    trainer.setup()
    return trainer.run()


def _manifest_style(samples: list[Sample], default_language: str | None) -> OutputStyle:
    """The writing conventions of the training transcripts (see whispertune.output_style)."""
    from whispertune.languages import language_code

    def code(lang: str | None) -> str | None:
        # An English-only model never reads --language, so a name it cannot resolve is no
        # error here either: such text simply has no convention to record.
        try:
            return language_code(lang) if lang else None
        except UserError:
            return None

    return style_of_manifest((code(s.language or default_language), s.text) for s in samples)
