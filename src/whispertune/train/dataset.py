"""Training data: validated manifests -> filtered samples -> (features, labels) batches.

Randomness (augmentation, timestamp/plain choice) is derived from (seed, epoch, sample index)
alone, never from a worker's or the global RNG, so a resumed run sees exactly the batches the
uninterrupted run would have seen, whatever the number of workers.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from whispertune.audio import SAMPLE_RATE, AudioError, load_audio
from whispertune.data.manifest import Sample, read_manifest
from whispertune.data.validate import ValidateOptions, validate_manifest
from whispertune.errors import UserError
from whispertune.train.augment import Augmenter
from whispertune.train.config import DataOptions, TrainOptions
from whispertune.train.labels import SpecialTokens, build_labels
from whispertune.train.packing import GAPS, PARTS

logger = logging.getLogger(__name__)

N_SAMPLES = 30 * SAMPLE_RATE


@dataclass
class FilterReport:
    """What was left out and why: counted and reported, never dropped silently."""

    kept: int = 0
    too_short: int = 0
    too_long: int = 0
    label_too_long: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.too_short + self.too_long + self.label_too_long

    def summary(self) -> str:
        return (
            f"{self.kept} kept, {self.dropped} left out (shorter than min: {self.too_short}, "
            f"longer than max: {self.too_long}, label too long: {self.label_too_long})"
        )


def load_checked_manifest(path: Path) -> list[Sample]:
    """Read a manifest after validating it; any error stops training before it starts."""
    report = validate_manifest(
        path, ValidateOptions(manifest=path, max_duration=1e9, check_tokens=False)
    )
    if not report.ok:
        shown = "\n".join(str(p) for p in report.errors[:20])
        more = len(report.errors) - 20
        raise UserError(
            f"{path}: {len(report.errors)} error(s) in the manifest; fix them (see "
            f"'whispertune data validate {path}') before training:\n{shown}"
            + (f"\n... and {more} more" if more > 0 else "")
        )
    return read_manifest(path)


def sample_duration(sample: Sample) -> float:
    if sample.start_time is not None or sample.end_time is not None:
        if sample.end_time is not None:
            return sample.end_time - (sample.start_time or 0.0)
    if sample.duration is not None:
        return sample.duration
    from whispertune.audio import audio_duration

    return audio_duration(sample.audio_path) - (sample.start_time or 0.0)


def label_length(sample: Sample, options: DataOptions, tokenizer, special: SpecialTokens) -> int:
    """Decoder length of the sample's longest target form (with <|sot|>): what the decoder
    limit is checked against and batches are grouped by."""
    longest = build_labels(
        sample,
        tokenizer,
        special,
        language=options.language,
        task=options.task,
        timestamps=options.timestamps,
    )
    return len(longest) + 1  # + <|sot|>


def filter_samples(
    samples: list[Sample], options: DataOptions, tokenizer, special: SpecialTokens
) -> tuple[list[Sample], list[int], list[float], FilterReport]:
    """Keep samples within the duration and label limits; also returns their label lengths
    and durations."""
    report = FilterReport()
    kept, lengths, durations = [], [], []
    for s in samples:
        d = sample_duration(s)
        n = label_length(s, options, tokenizer, special)
        if d < options.min_duration and not s.is_no_speech:
            report.too_short += 1
            reason = f"{d:.2f} s < {options.min_duration} s"
        elif d > options.max_duration:
            report.too_long += 1
            reason = f"{d:.2f} s > {options.max_duration} s"
        elif n > options.max_label_tokens:
            report.label_too_long += 1
            reason = f"{n} label tokens > {options.max_label_tokens}"
        else:
            kept.append(s)
            lengths.append(n)
            durations.append(d)
            continue
        if len(report.examples) < 5:
            report.examples.append(f"{s.audio_path.name} (line {s.line}): {reason}")
    report.kept = len(kept)
    return kept, lengths, durations, report


class SpeechDataset(torch.utils.data.Dataset):
    """Index -> {"input_features", "labels"}; the epoch is set so randomness can depend on it."""

    def __init__(
        self,
        samples: list[Sample],
        feature_extractor,
        tokenizer,
        special: SpecialTokens,
        options: TrainOptions,
        train: bool = True,
    ) -> None:
        self.samples = samples
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.special = special
        self.options = options
        self.train = train
        self.epoch = 0
        self.augmenter = Augmenter(options.augment) if train and options.augmenting() else None

    def __len__(self) -> int:
        return len(self.samples)

    def rng(self, index: int) -> random.Random:
        return random.Random(f"{self.options.optim.seed}:{self.epoch}:{index}")

    def labels(self, index: int) -> list[int]:
        s = self.samples[index]
        o = self.options.data
        timestamps = (
            o.timestamps
            and bool(s.sentences)
            and (self.rng(index).random() < o.timestamp_ratio if self.train else True)
        )
        return build_labels(
            s, self.tokenizer, self.special, language=o.language, task=o.task, timestamps=timestamps
        )

    def audio(self, index: int) -> np.ndarray:
        s = self.samples[index]
        parts = s.extra.get(PARTS, [s])
        try:
            pieces = [load_audio(p.audio_path, p.start_time, p.end_time) for p in parts]
        except AudioError as e:
            raise UserError(f"line {s.line}: {e}") from e
        audio = pieces[0]
        if len(pieces) > 1:  # a packed window (packing.join): silence for each pause
            joined = [audio]
            for gap, piece in zip(s.extra[GAPS], pieces[1:], strict=True):
                joined += [np.zeros(round(gap * SAMPLE_RATE), dtype=piece.dtype), piece]
            audio = np.concatenate(joined)
        if self.augmenter is not None:
            audio = self.augmenter(audio, self.rng(index))
        return audio[:N_SAMPLES]

    def features(self, audio: np.ndarray) -> np.ndarray:
        return self.feature_extractor(
            audio, sampling_rate=SAMPLE_RATE, return_tensors="np"
        ).input_features[0]

    def __getitem__(self, index: int) -> dict:
        return {
            "index": index,
            "input_features": self.features(self.audio(index)),
            "labels": self.labels(index),
        }


# Label rows are padded to a multiple of this many positions (see :func:`collate`).
LABEL_MULTIPLE = 16


def collate(
    batch: list[dict], pad_id: int, sot: int, multiple: int = 1, limit: int | None = None
) -> dict[str, torch.Tensor]:
    """Stack features (or cached encoder outputs); pad labels with -100 and decoder inputs,
    to the longest label rounded up to ``multiple`` positions (at most ``limit``).

    Why round up: in bf16 on a CPU, oneDNN and ATen's small-matrix kernels are made and
    kept for each new matrix shape, and the decoder's shapes follow the batch's longest
    label: one batch in two brought new ones, and the run's live memory grew by 13 MB a step
    (1.3 GB over the default recipe's 102 steps; issue 26). With lengths rounded up to 16 the
    decoder sees a few shapes a run. The padded positions are masked out of the loss, and
    the decoder's causal attention keeps them from the real ones.
    """
    needed = max(len(b["labels"]) for b in batch)
    longest = -(-needed // multiple) * multiple
    if limit is not None:
        longest = max(needed, min(longest, limit))
    labels = torch.full((len(batch), longest), -100, dtype=torch.long)
    decoder_in = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    for i, b in enumerate(batch):
        ids = torch.tensor(b["labels"], dtype=torch.long)
        labels[i, : len(ids)] = ids
        decoder_in[i, 0] = sot
        decoder_in[i, 1 : len(ids)] = ids[:-1]
    out = {
        "labels": labels,
        "decoder_input_ids": decoder_in,
        "index": torch.tensor([b["index"] for b in batch]),
    }
    if "encoder_hidden" in batch[0]:
        out["encoder_hidden"] = torch.from_numpy(np.stack([b["encoder_hidden"] for b in batch]))
    else:
        out["input_features"] = torch.from_numpy(np.stack([b["input_features"] for b in batch]))
    return out


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True
) -> list[list[int]]:
    """All batches of one epoch, in order: shuffled, and grouped by label length in
    mega-batches so the decoder pads little while batch order stays random."""
    rng = random.Random(f"batches:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        mega = batch_size * 16
        grouped = []
        for i in range(0, len(order), mega):
            chunk = sorted(order[i : i + mega], key=lambda j: -lengths[j])
            grouped.extend(chunk)
        order = grouped
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def rank_batches(
    batches: list[list[int]], rank: int, world_size: int, grad_accum: int
) -> list[list[int]]:
    """This process's micro-batches of an epoch: every rank gets the same number (DDP would
    hang otherwise) and only whole accumulation groups are kept."""
    per_rank = len(batches) // world_size
    steps = per_rank // grad_accum
    if steps == 0:
        raise UserError(
            f"too little data for one optimizer step: {len(batches)} batches for {world_size} "
            f"process(es) x {grad_accum} accumulation steps; lower --batch-size or --grad-accum"
        )
    return batches[rank : per_rank * world_size : world_size][: steps * grad_accum]


def steps_per_epoch(n_samples: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch, the unit AdaLoRA's schedule and the LR schedule use."""
    batches = math.ceil(n_samples / batch_size)
    return max(1, (batches // world_size) // grad_accum)
