"""The training loop: one loop for LoRA, AdaLoRA and full fine-tuning, single- or multi-process.

accelerate makes the same code run under ``python``, ``torchrun --nproc_per_node N`` and
``accelerate launch`` (DDP over gloo on CPU, NCCL on GPUs). The loop owns checkpointing and
resume, so an interrupted run continues exactly: model, optimizer, scheduler, RNG, AdaLoRA
state and the position in the epoch's batch order are all restored.

The :class:`Trainer` is split as litgpt's finetune scripts split setup and fit: ``setup``
(run directory, data, model, optimizer) and ``fit`` (epochs of steps, each followed by its
logging, evaluation and saving, then the closing publication of best/).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from whispertune import options as opts
from whispertune.data.manifest import Sample
from whispertune.errors import UserError
from whispertune.output_style import OutputStyle, style_of_manifest
from whispertune.progress import Cancelled, ProgressCallback, ProgressEvent, Reporter
from whispertune.train import checkpoint as ckpt
from whispertune.train.config import TrainOptions
from whispertune.train.dataset import (
    LABEL_MULTIPLE,
    SpeechDataset,
    collate,
    epoch_batches,
    filter_samples,
    label_length,
    load_checked_manifest,
    rank_batches,
    steps_per_epoch,
)
from whispertune.train.hardware import (
    loaded_caching_allocator,
    release_free_memory,
    return_freed_activations_to_the_os,
)
from whispertune.train.labels import SpecialTokens
from whispertune.train.loss import decoder_states_as_logits, projected_cross_entropy
from whispertune.train.model import build_model, check_hardware, run_top_encoder, top_encoder
from whispertune.train.packing import pack_samples
from whispertune.train.recompute import use_seeded_dropouts
from whispertune.train.run_lock import LOCK_NAME, run_lock
from whispertune.train.validate import PUBLISHED_STAGE, STAGE, FrozenEncoderPart, Validator

PUBLISHED_ADAPTER = "published"  # best/'s adapter while the run scores it

logger = logging.getLogger(__name__)

_COMPUTING_CACHE = "computing encoder outputs (once per clip: later runs on these clips reuse them)"
_RUN_FILES = (
    ckpt.RUN_FILE,
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
    status: str  # "finished" | "early-stopped" (a cancelled run raises Cancelled)
    train_samples: int
    filtered: str
    seconds: float
    best_step: int | None = None
    averaged_steps: list[int] = field(default_factory=list)  # best/ = their adapters' mean
    published_metric: float | None = None  # best/ as published (averaged, scaled), on --eval


@dataclass
class _Window:
    """Loss and throughput since the last logged step (evaluation time excluded)."""

    loss: float = 0.0
    batches: int = 0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, samples: int) -> None:
        self.loss += loss
        self.batches += 1
        self.samples += samples

    def mean_loss(self) -> float:
        return self.loss / max(1, self.batches)

    def samples_per_s(self) -> float:
        return self.samples / max(time.perf_counter() - self.start, 1e-9)

    def restart_clock(self) -> None:
        self.start = time.perf_counter()


def _prepare_run_dir(run_dir: Path, options: TrainOptions, is_main: bool) -> Path | None:
    """Refuse to mix runs; returns the checkpoint to resume from, if any (the newest that
    verifies: see :func:`checkpoint.resume_checkpoint`)."""
    occupied = run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir())
    if options.run.resume:
        latest = ckpt.resume_checkpoint(run_dir) if run_dir.exists() else None
        if latest is None:
            logger.warning(
                "--resume: no checkpoint in %s yet; starting from the beginning", run_dir
            )
        return latest
    if occupied and not options.run.force:
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


def _same_resume_point(resume_from: Path | None, run_dir: Path) -> None:
    """Stop every rank with the reason unless all resume from the same checkpoint.

    Why: with ``--output`` on each machine's own disk, the ranks of the other nodes found no
    checkpoint and started at step 0 while rank 0 resumed; the two then waited on each other
    for ever (a hang, not an error).
    """
    from accelerate.utils import gather_object

    seen = gather_object([resume_from.name if resume_from is not None else None])
    if len(set(seen)) > 1:
        found = ", ".join(f"rank {rank}: {name or 'none'}" for rank, name in enumerate(seen))
        raise UserError(
            f"--resume: the processes found different checkpoints in {run_dir} ({found}); "
            "on several machines --output must be one shared directory (or a copy of the "
            "run directory on every machine)"
        )


class Trainer:
    """Holds the state of one run; ``setup()`` then ``fit()``. Built by :func:`train`."""

    def __init__(
        self,
        options: TrainOptions,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> None:
        from accelerate import Accelerator

        check_hardware(options)
        self.o = options
        self.progress = progress
        self.cancel = cancel
        if options.run.threads:
            torch.set_num_threads(options.run.threads)
        precision = options.optim.resolved_precision()  # --precision auto: bf16 where native
        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
        self.acc = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
        self.is_main = self.acc.is_main_process
        self.run_dir = Path(options.run.output)
        self.state = ckpt.TrainerState()
        self.saved_at = -1  # the step of the newest checkpoint this process saved
        self.writer = None
        self.validator: Validator | None = None
        torch.manual_seed(options.optim.seed)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        # rank 0 first: it sets damaged checkpoints aside, the others then find the same one
        resume_from = _prepare_run_dir(self.run_dir, self.o, True) if self.is_main else None
        self.acc.wait_for_everyone()
        if not self.is_main:
            resume_from = _prepare_run_dir(self.run_dir, self.o, False)
        if self.o.run.resume and self.acc.num_processes > 1:
            _same_resume_point(resume_from, self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = self._prepare_data()
        model = self._build_model(tokenizer)
        self._build_optimizer(model)
        self._build_validator()
        if resume_from is not None:
            self._restore(resume_from)
        elif self.o.run.resume:
            self._truncate_metrics(0)  # no checkpoint: the run starts over, its metrics too
        if self.is_main:
            self._write_run_file()
            self._open_tensorboard()

    def _prepare_data(self):
        """Read, filter and pack the samples and size the schedule, with the tokenizer alone
        (cheap) before the model is loaded; returns the tokenizer."""
        from whispertune.models.loading import load_processor
        from whispertune.models.sources import resolve

        data = self.o.data
        samples = self._read_samples()
        tokenizer = load_processor(resolve(self.o.model)).tokenizer
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        self.samples, self.lengths, durations, self.filter_report = filter_samples(
            samples, data, tokenizer, self.special
        )
        logger.info("training data: %s", self.filter_report.summary())
        for example in self.filter_report.examples:
            logger.info("  left out: %s", example)
        if not self.samples:
            raise UserError(
                f"{data.train}: no sample left after filtering ({self.filter_report.summary()})"
            )
        self.clip_count = len(self.samples)
        self.output_style = _manifest_style(self.samples, data.language)
        if not self.output_style.is_plain():
            logger.info(
                "the training transcripts write Mandarin numbers in characters: the model "
                "will too (output_style.json; --numerals keep at inference turns it off)"
            )
        if data.pack_seconds > 0:
            self._pack(tokenizer, durations)
        optim = self.o.optim
        self.steps_per_epoch = steps_per_epoch(
            len(self.samples), optim.batch_size, self.acc.num_processes, optim.grad_accum
        )
        epochs_steps = math.ceil(self.o.total_epochs() * self.steps_per_epoch)
        self.total_steps = optim.max_steps or max(1, epochs_steps)
        return tokenizer

    def _read_samples(self) -> list[Sample]:
        """The training samples (with generated no-speech clips); sets ``eval_samples``: the
        --eval manifest, or the --holdout tail of --train."""
        data, evaluation = self.o.data, self.o.evaluation
        samples = load_checked_manifest(data.train)
        self.eval_samples = load_checked_manifest(data.eval) if data.eval else []
        self.holdout_count = 0
        if not data.eval and evaluation.holdout > 0:
            samples, self.eval_samples = split_holdout(samples, evaluation.holdout)
            self.holdout_count = len(self.eval_samples)
            if self.eval_samples:
                logger.info(
                    "no --eval: the last %d clips of %s are held out to choose the best "
                    "checkpoint (--holdout %g)",
                    len(self.eval_samples),
                    data.train,
                    evaluation.holdout,
                )
        if evaluation.eval_limit:
            self.eval_samples = self.eval_samples[: evaluation.eval_limit]
        if data.no_speech_mix > 0:
            from whispertune.models.cache import cache_dir
            from whispertune.train.no_speech import no_speech_samples

            count = round(data.no_speech_mix * len(samples))
            samples = samples + no_speech_samples(count, cache_dir("no-speech"), samples)
        return samples

    def _pack(self, tokenizer, durations: list[float]) -> None:
        """Join consecutive clips into windows of up to --pack-seconds (see packing.py)."""
        data = self.o.data
        packed = pack_samples(
            self.samples,
            durations,
            self.lengths,
            data.pack_seconds,
            data.max_label_tokens,
            self.o.optim.seed,
            max_pause=data.pack_pause,
        )
        self.lengths = [label_length(s, data, tokenizer, self.special) for s in packed]
        logger.info(
            "%d clips joined into %d training windows of up to %g s (--pack-seconds), %s",
            len(self.samples),
            len(packed),
            data.pack_seconds,
            f"up to {data.pack_pause:g} s of silence between clips (--pack-pause)"
            if data.pack_pause > 0
            else "clips back to back",
        )
        self.samples = packed

    def _build_model(self, tokenizer):
        """The model with its trainable parameters, and the data it trains on (the encoder
        cache where the encoder is frozen)."""
        o = self.o
        loaded = build_model(o, self.total_steps)
        self.processor = loaded.processor
        model = loaded.model
        self.top_layers = o.lora.trained_encoder_layers(model.config.encoder_layers)
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
        self.use_cache = o.uses_encoder_cache()
        # a step's activations are hundreds of MB to GBs, which glibc's heap would keep
        return_freed_activations_to_the_os()
        logger.info("memory allocator: %s", loaded_caching_allocator() or "glibc")
        if self.use_cache:
            self.train_data = self._encoder_cache(model)
            if self.top_layers and o.optim.recompute_encoder_layers:
                use_seeded_dropouts(top_encoder(model).layers[-self.top_layers :])
        else:
            self.train_data = self.dataset
            if o.lora.encoder_cache and o.lora.encoder_frozen() and o.augmenting():
                logger.info("encoder cache off: augmentation changes the encoder's input")
        return model

    def _encoder_cache(self, model):
        from whispertune.models.cache import cache_dir
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
        directory = cache_dir("encoder")
        # One builder per machine, not per run: the cache directory is local to each node
        # (another node's rank reading rank 0's file found none); where it is shared, the
        # builders write distinct temporary files and the finished cache is reused.
        if self.acc.is_local_main_process:
            report = Reporter(
                self.progress if self.is_main else None,  # progress is rank 0's, as elsewhere
                "encoder-cache",
                len(self.dataset),
                "clip",
            )

            def computed(done: int, total: int) -> None:  # not called where the cache exists
                first = report.done == 0
                report(done, total, message=_COMPUTING_CACHE if first else "")

            cache = build_encoder_cache(
                encoder,
                self.dataset,
                directory,
                key,
                progress=computed,
                trained_layers=self.top_layers,
                cancel=self.cancel,
            )
            release_free_memory()  # the build's batches are not the steps' sizes
        self.acc.wait_for_everyone()
        if not self.acc.is_local_main_process:
            cache = EncoderCache(
                directory / f"encoder-{key}.f16",
                len(self.dataset),
                encoder.config.max_source_positions,
                encoder.config.d_model,
            )
        return CachedDataset(self.dataset, cache)

    def _build_optimizer(self, model) -> None:
        """AdamW over the trainable parameters, the LR schedule, the devices."""
        from transformers import get_scheduler

        optim = self.o.optim
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.o.peak_lr(), weight_decay=optim.weight_decay)
        self.scheduler = get_scheduler(
            "constant_with_warmup" if optim.scheduler == "constant" else optim.scheduler,
            optimizer,
            num_warmup_steps=min(optim.warmup_steps, self.total_steps // 2),
            num_training_steps=self.total_steps,
        )
        self.model, self.optimizer = self.acc.prepare(model, optimizer)

    def _build_validator(self) -> None:
        """The metric (on every rank, for the result) and what scores it (rank 0 only)."""
        from whispertune.evaluate import choose_metric

        self.metric_name = None
        if not self.eval_samples:
            return
        o = self.o
        self.metric_name = choose_metric(o.evaluation.metric, self.eval_samples, o.data.language)
        if self.is_main:
            frozen = o.lora.encoder_frozen()
            self.validator = Validator(
                self.processor,
                self.eval_samples,
                o,
                self.metric_name,
                self.acc.device,
                self.output_style,
                FrozenEncoderPart(self.top_layers, self.run_dir) if frozen else None,
            )

    def _write_run_file(self) -> None:
        record = {
            "options": opts.to_dict(self.o),
            "world_size": self.acc.num_processes,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "train_samples": len(self.samples),
            "train_clips": self.clip_count,
            "filtered": self.filter_report.summary(),
            "encoder_cache": self.use_cache,
            "trained_encoder_layers": self.top_layers,
            "holdout_clips": self.holdout_count,
            "precision": self.o.optim.resolved_precision(),
            "allocator": loaded_caching_allocator() or "glibc",
        }
        (self.run_dir / ckpt.RUN_FILE).write_text(
            json.dumps(record, indent=1, default=str), encoding="utf-8"
        )

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # an optional third-party extra
            logger.info("tensorboard not installed: metrics go to metrics.jsonl only")
            return
        self.writer = SummaryWriter(
            str(self.run_dir / "tensorboard"), purge_step=self.state.step + 1 or None
        )

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
        self.saved_at = state.step
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
        with ckpt.atomic_text_file(path) as fh:  # a kill here keeps the old file whole
            fh.write("".join(line + "\n" for line in keep))

    def _adalora_extra(self) -> dict[str, Any]:
        model = self.acc.unwrap_model(self.model)
        if self.o.lora.method != "adalora":
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

    # ------------------------------------------------------------- fit
    def fit(self) -> TrainResult:
        """Train to the end of the schedule (or early stop); raises Cancelled when ``cancel``
        is set, after saving a checkpoint of the current step (see :func:`train`)."""
        start = time.perf_counter()
        self.model.train()
        self.window = _Window()
        self.report = Reporter(self.progress, "train", self.total_steps, "step")
        self.report(self.state.step)
        status = "finished"
        while self.state.step < self.total_steps and status == "finished":
            status = self._epoch()
        if self.saved_at != self.state.step:
            self._save()
        return self._finish(status, time.perf_counter() - start)

    def _epoch(self) -> str:
        """Train through the rest of the current epoch, or until the run stops; its status."""
        epoch = self.state.epoch
        batches, loader = self._loader(epoch, self.state.batch_in_epoch)
        micro = 0
        for batch in loader:
            micro += 1
            if not self._micro_step(batch):
                continue  # accumulating gradients
            position = epoch + self.state.batch_in_epoch / max(1, len(batches))
            end_of_epoch = self.state.batch_in_epoch >= len(batches)
            if end_of_epoch:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
            status = self._after_step(position)
            if status != "finished" or end_of_epoch or self.state.step >= self.total_steps:
                return status
        if micro == 0 and self.state.batch_in_epoch >= len(batches):  # resumed at its end
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
        return "finished"

    def _loader(self, epoch: int, skip: int):
        o = self.o
        self.train_data.epoch = epoch
        batches = rank_batches(
            epoch_batches(self.lengths, o.optim.batch_size, o.optim.seed, epoch),
            self.acc.process_index,
            self.acc.num_processes,
            o.optim.grad_accum,
        )
        pad = self.special.eot
        return batches, torch.utils.data.DataLoader(
            self.train_data,
            batch_sampler=batches[skip:],
            collate_fn=functools.partial(
                collate,
                pad_id=pad,
                sot=self.special.sot,
                multiple=LABEL_MULTIPLE,
                limit=self.acc.unwrap_model(self.model).config.max_target_positions,
            ),
            num_workers=max(0, o.run.num_workers),
            persistent_workers=False,
            # a private generator: worker seeds must not draw from the global RNG (dropout's),
            # or a resumed run would diverge from the uninterrupted one
            generator=torch.Generator().manual_seed(o.optim.seed * 1000 + epoch),
        )

    def _micro_step(self, batch: dict[str, torch.Tensor]) -> bool:
        """Forward and backward one micro-batch; True when it completed an optimizer step."""
        optim = self.o.optim
        sync = (self.state.batch_in_epoch + 1) % optim.grad_accum == 0
        ctx = contextlib.nullcontext() if sync else self.acc.no_sync(self.model)
        with ctx:
            loss = self._loss(batch)
            self.acc.backward(loss / optim.grad_accum)
        self.last_loss = float(loss.detach())
        self.window.add(self.last_loss, len(batch["labels"]) * self.acc.num_processes)
        self.state.batch_in_epoch += 1
        if not sync:
            return False
        if optim.max_grad_norm:
            self.acc.clip_grad_norm_(self.model.parameters(), optim.max_grad_norm)
        self.optimizer.step()
        if self.o.lora.method == "adalora":
            self.acc.unwrap_model(self.model).base_model.update_and_allocate(self.state.step)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return True

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = self.acc.device
        kwargs: dict[str, Any] = {"decoder_input_ids": batch["decoder_input_ids"].to(device)}
        with self.acc.autocast():
            if "encoder_hidden" in batch:
                hidden = batch["encoder_hidden"].to(device)
                if self.top_layers:
                    encoder = top_encoder(self.acc.unwrap_model(self.model))
                    recompute = self.o.optim.recompute_encoder_layers
                    hidden = run_top_encoder(encoder, hidden, self.top_layers, recompute)
                kwargs["encoder_outputs"] = (hidden,)
            else:
                kwargs["input_features"] = batch["input_features"].to(device)
            labels = batch["labels"].to(device)
            smoothing = self.o.optim.label_smoothing
            with decoder_states_as_logits(self.acc.unwrap_model(self.model)) as projection:
                out = self.model(**kwargs).logits
            if projection is not None:  # the logits made block by block (train/loss.py)
                loss = projected_cross_entropy(out, projection.weight, labels, smoothing)
        if projection is None:
            loss = torch.nn.functional.cross_entropy(
                out.float().reshape(-1, out.shape[-1]),
                labels.reshape(-1),
                ignore_index=-100,
                label_smoothing=smoothing,
            )
        if self.o.lora.method == "adalora":
            loss = loss + adalora_orthogonal_penalty(self.acc.unwrap_model(self.model))
        return loss

    # ------------------------------------------------------- after a step
    def _after_step(self, epoch: float) -> str:
        """Log, evaluate and save as the schedule says; stop when cancelled. The status."""
        last = self.state.step >= self.total_steps
        self._log_step(epoch, last)
        status = "finished"
        if self.eval_samples and (last or self._due(self.o.evaluation.eval_steps)):
            status = self._evaluate_and_save()
        elif last or self._due(self.o.run.save_steps):
            self._save()
        self._stop_if_cancelled()
        return status

    def _due(self, every: int | None) -> bool:
        """Whether this step is one of every N (default: the last step of each epoch)."""
        return self.state.step % (every or self.steps_per_epoch) == 0

    def _log_step(self, epoch: float, last: bool) -> None:
        step = self.state.step
        lr = self.scheduler.get_last_lr()[0]
        rate = self.window.samples_per_s()
        if step % self.o.run.log_steps == 0 or last:
            self._log(
                {
                    "step": step,
                    "epoch": round(epoch, 3),
                    "loss": self.window.mean_loss(),
                    "lr": lr,
                    "samples_per_s": rate,
                }
            )
            self.window = _Window()
        figures = {"loss": self.last_loss, "lr": lr, "epoch": round(epoch, 3)}
        self.report(step, figures={**figures, "samples_per_s": rate})

    def _evaluate_and_save(self) -> str:
        improved = self._evaluate()
        self.window.restart_clock()  # throughput excludes evaluation time
        self._save()
        if improved and self.is_main:
            ckpt.publish_best(
                self.run_dir,
                self._checkpoint_dir(self.state.step),
                self.processor,
                self.o.lora.adapter_scale,
            )
        patience = self.o.evaluation.early_stopping_patience
        if patience is not None and self.state.evals_without_improvement >= patience:
            return "early-stopped"
        return "finished"

    def _stop_if_cancelled(self) -> None:
        """Raise Cancelled (every rank at the same step: rank 0's ``cancel`` decides) with a
        checkpoint of this step, from which --resume continues as if never stopped."""
        stop = self.cancel is not None and self.cancel.is_set()
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [stop]
            broadcast_object_list(box, from_process=0)
            stop = bool(box[0])
        if not stop:
            return
        if self.saved_at != self.state.step:
            self._save()
        self._close()
        checkpoint = self._checkpoint_dir(self.state.step)
        raise Cancelled(
            f"training stopped at step {self.state.step} of {self.total_steps}; "
            f"checkpoint {checkpoint}",
            state="resumable",
            checkpoint=checkpoint,
        )

    def _checkpoint_dir(self, step: int) -> Path:
        return self.run_dir / ckpt.CHECKPOINTS / f"step-{step:07d}"

    def _save(self) -> None:
        self.acc.wait_for_everyone()
        self.state.checkpoints_saved += 1
        if self.is_main:
            ckpt.save_checkpoint(
                self.run_dir,
                self.state,
                self.acc.unwrap_model(self.model),
                self.optimizer,
                self.scheduler,
                extra=self._adalora_extra(),
                keep=self.o.run.save_total_limit,
                style=self.output_style,
            )
        self.acc.wait_for_everyone()
        self.saved_at = self.state.step

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

    def _evaluate(self) -> bool:
        """Score the eval set (rank 0); True when the metric improved."""
        improved = False
        if self.is_main:
            t = time.perf_counter()
            rate = self.validator.score(self.acc.unwrap_model(self.model), self.progress)
            self.model.train()
            improved = self._record_evaluation(rate, time.perf_counter() - t)
        return bool(self._broadcast(improved))

    def _record_evaluation(self, rate: float, seconds: float) -> bool:
        s, metric = self.state, self.metric_name
        improved = s.best_metric is None or rate < s.best_metric
        if improved:
            s.best_metric, s.best_step = rate, s.step
            s.evals_without_improvement = 0
        else:
            s.evals_without_improvement += 1
        record = {"step": s.step, f"eval_{metric}": rate, "eval_seconds": seconds}
        s.history.append(record)
        self._log(record)
        self._validated(
            STAGE,
            f"step {s.step}: eval {metric} {rate * 100:.2f} % (best {s.best_metric * 100:.2f} %)",
            {metric: rate, "best": s.best_metric},
            seconds,
        )
        return improved

    def _validated(
        self, stage: str, message: str, figures: dict[str, float], seconds: float
    ) -> None:
        """The closing event of one evaluation: its figures and its line."""
        if self.progress is None:
            return
        n = len(self.validator.samples)
        self.progress(ProgressEvent(stage, n, n, "clip", seconds, message=message, figures=figures))

    def _broadcast(self, value: Any) -> Any:
        if self.acc.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value, self.state]
        broadcast_object_list(box, from_process=0)
        self.state = box[1] if not self.is_main else self.state
        return box[0]

    # ------------------------------------------------------------- finish
    def _finish(self, status: str, seconds: float) -> TrainResult:
        """Publish best/ (the best checkpoint, averaged and scaled, and scored as published;
        the last checkpoint without an eval set) and close the run."""
        published, averaged = None, []
        if self.is_main:
            published, averaged = self._publish()
        self.acc.wait_for_everyone()
        self._close()
        return TrainResult(
            run_dir=self.run_dir,
            best_dir=self.run_dir / ckpt.BEST,
            steps=self.state.step,
            best_metric=self.state.best_metric,
            metric_name=self.metric_name,
            status=status,
            train_samples=len(self.samples),
            filtered=self.filter_report.summary(),
            seconds=seconds,
            best_step=self.state.best_step,
            averaged_steps=[int(p.name.split("-")[1]) for p in averaged],
            published_metric=published,
        )

    def _publish(self) -> tuple[float | None, list[Path]]:
        """best/ as the run leaves it; its figure (when it is not the best epoch's as scored)
        and the checkpoints averaged into it."""
        lora = self.o.lora
        best = self.run_dir / ckpt.BEST
        if self.validator is None or not best.exists():
            last = self._checkpoint_dir(self.state.step)
            ckpt.publish_best(self.run_dir, last, self.processor, lora.adapter_scale)
            return None, []
        averaged = self._publish_average()
        if averaged or (lora.adapter and lora.adapter_scale != 1):
            return self._evaluate_published(best), averaged
        return None, averaged

    def _publish_average(self) -> list[Path]:
        """Publish best/ as the average of the best checkpoint's adapter and the newest other
        checkpoints' (``--average-checkpoints``); the checkpoints used, or [] when it was not
        averaged (see :func:`checkpoint.average_adapters` for why)."""
        lora = self.o.lora
        if lora.average_checkpoints <= 1 or self.state.best_step is None:
            return []
        if lora.method != "lora":
            logger.info("--average-checkpoints: LoRA only; best/ is the best %s epoch", lora.method)
            return []
        best_ckpt = self._checkpoint_dir(self.state.best_step)
        newest_first = reversed(ckpt.completed_checkpoints(self.run_dir))
        others = [p for p in newest_first if p != best_ckpt][: lora.average_checkpoints - 1]
        if len(others) < lora.average_checkpoints - 1:
            self._explain_short_average(len(others))
        if not others or not best_ckpt.is_dir():
            return []
        made_of = ckpt.publish_best(
            self.run_dir, best_ckpt, self.processor, lora.adapter_scale, average_with=others
        )
        # publish_best leaves best/ unaveraged where the identity does not hold (DoRA, ...)
        return sorted(made_of) if len(made_of) > 1 else []

    def _explain_short_average(self, others: int) -> None:
        """Why best/ averages fewer checkpoints than --average-checkpoints asks, with the
        advice that fits: pruning (--save-total-limit) or a run that saved few."""
        wanted = self.o.lora.average_checkpoints
        made = max(0, self.state.checkpoints_saved - 1)  # besides the best one
        outcome = f"averaging {others + 1}" if others else "best/ is the best checkpoint alone"
        if made > others:
            logger.warning(
                "--average-checkpoints %d: only %d checkpoint(s) besides the best are kept; "
                "%s (--save-total-limit %d or more keeps enough)",
                wanted,
                others,
                outcome,
                wanted - 1,
            )
        else:
            logger.info(
                "--average-checkpoints %d: the run saved %d checkpoint(s) besides the best; %s",
                wanted,
                others,
                outcome,
            )

    def _evaluate_published(self, best: Path) -> float:
        """Score best/ as published (averaged and scaled), so the figure the run reports is
        the published model's, not only the full-scale best epoch's."""
        t = time.perf_counter()
        if self.o.lora.method == "lora":
            rate = self._score_adapter_in_place(best)
        else:
            rate = self._score_loaded(best)
        seconds = time.perf_counter() - t
        metric = self.metric_name
        self._log(
            {"step": self.state.step, f"best_dir_{metric}": rate, "eval_seconds": seconds}
        )
        message = f"best/ as published: eval {metric} {rate * 100:.2f} %"
        self._validated(PUBLISHED_STAGE, message, {metric: rate}, seconds)
        return rate

    def _score_adapter_in_place(self, best: Path) -> float:
        """best/'s adapter scored on the model in training, beside the adapter trained: the
        same base weights, so no second model (276 MB of weights for whisper-base and the
        copies a merge makes, the run's peak in the default recipe before). The adapter is
        applied as it is trained, unmerged: the same function as best/ merged, up to float
        rounding."""
        model = self.acc.unwrap_model(self.model)
        trained = model.active_adapter
        model.load_adapter(str(best), adapter_name=PUBLISHED_ADAPTER)
        try:
            model.set_adapter(PUBLISHED_ADAPTER, inference_mode=True)
            return self.validator.score(model, self.progress, PUBLISHED_STAGE)
        finally:
            model.set_adapter(trained)
            model.delete_adapter(PUBLISHED_ADAPTER)

    def _score_loaded(self, best: Path) -> float:
        """best/ loaded as users load it: where its adapter cannot sit beside the trained one
        (AdaLoRA trains a single adapter)."""
        from whispertune.models.loading import load_transformers

        # in the training precision on a GPU, where memory is short
        device = self.acc.device
        dtype = self.o.optim.resolved_precision() if device.type == "cuda" else "fp32"
        loaded = load_transformers(str(best), dtype=dtype, device=str(device))
        rate = self.validator.score(loaded.model, self.progress, PUBLISHED_STAGE)
        del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return rate

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Leave the process as a run found it: torch's thread count, the python, numpy, torch
    (and CUDA) RNG states (a run seeds them, and a resumed run sets them from its checkpoint)
    and accelerate's process-wide AcceleratorState (which otherwise refuses a later run in
    another precision), on success, error or cancel alike."""
    from accelerate.state import AcceleratorState

    threads = torch.get_num_threads()
    rng = ckpt.rng_state()
    accelerate_was_set = bool(AcceleratorState._shared_state)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        ckpt.set_rng_state(rng)
        if not accelerate_was_set:
            AcceleratorState._reset_state()  # the process group (PartialState) stays


def train(
    options: TrainOptions,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Fine-tune per ``options``; the run directory holds checkpoints, metrics and best/.

    ``progress`` receives :class:`~whispertune.progress.ProgressEvent`\\ s: stage
    "encoder-cache" (clips, when the encoder output is cached), "train" (``done`` = optimizer
    step of ``total`` steps; figures loss, lr, epoch, samples_per_s), "validate" (clips of
    one evaluation, which starts again at 0 for the next, after steps; its last event has the
    figures {metric: value, "best": value} and a ``message`` line such as "step 48: eval cer
    18.33 % (best 18.33 %)") and, at the end, "validate-best" (best/ scored as published,
    where averaging or scaling made it differ from the best checkpoint).

    ``cancel``, when set, stops the run after the current step (its evaluation, if one is
    due, finishes first): a checkpoint of that step is saved and
    :class:`~whispertune.progress.Cancelled` is raised with ``state="resumable"`` and
    ``checkpoint``; ``resume`` continues from it to the weights an uninterrupted run ends
    with. Set while the encoder cache is computed, it stops there (``state="removed"``: no
    step was trained, the partial cache is deleted).

    Process-wide state: the torch thread count (``threads``), the RNG states and accelerate's
    state are restored on return, error or cancel. One change stays: a run fixes glibc's
    mmap threshold at 1 MiB
    (:func:`~whispertune.train.hardware.return_freed_activations_to_the_os`), which glibc
    offers no way to undo; it only makes large freed buffers go back to the OS.
    """
    # One run per directory, held for the run's life (rank 0's lock covers its other ranks)
    main = int(os.environ.get("RANK", "0")) == 0
    with run_lock(Path(options.run.output), hold=main), process_state_kept():
        trainer = Trainer(options, progress, cancel)
        trainer.setup()
        return trainer.fit()


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
