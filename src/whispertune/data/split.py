"""Split one manifest into train and test manifests, reproducibly.

The split is a seeded shuffle, so the same seed gives the same test set on every machine and a
WER measured on it stays comparable between runs. ``--by`` keeps samples that share a value
(the same speaker, or cuts of the same audio file) on one side, so the test set never holds
audio the model was trained on. Each output keeps the input's line order.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from whispertune.data.manifest import Sample, read_manifest, write_manifest
from whispertune.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class SplitOptions:
    """Options of ``whispertune data split``."""

    manifest: Path = field(metadata={"positional": True, "help": "the JSONL manifest to split"})
    train: Path = field(metadata={"help": "output manifest of the training part", "metavar": "OUT"})
    test: Path = field(metadata={"help": "output manifest of the test part", "metavar": "OUT"})
    ratio: float = field(
        default=0.9, metadata={"help": "fraction of the samples (or groups) that go to --train"}
    )
    seed: int = field(
        default=0, metadata={"help": "random seed; the same seed always gives the same split"}
    )
    by: str | None = field(
        default=None,
        metadata={
            "help": "keep samples with the same value of this manifest field on one side: "
            "'audio' for the same audio file, or any extra field such as 'speaker' "
            "(default: split single samples)",
            "metavar": "FIELD",
        },
    )
    force: bool = field(
        default=False, metadata={"help": "overwrite --train/--test when they exist"}
    )


@dataclass
class SplitResult:
    train_path: Path
    test_path: Path
    train: int
    test: int


def _group_key(sample: Sample, by: str | None, index: int) -> object:
    if by is None:
        return index
    if by == "audio":
        return str(sample.audio_path)
    if by in ("language", "sentence"):
        return getattr(sample, by)
    value = sample.extra.get(by)
    # A sample without the field is a group of its own.
    return ("__single__", index) if value is None else repr(value)


def split_samples(
    samples: list[Sample], ratio: float = 0.9, seed: int = 0, by: str | None = None
) -> tuple[list[Sample], list[Sample]]:
    """(train, test) of ``samples``; both non-empty, each in the input order."""
    if not 0.0 < ratio < 1.0:
        raise UserError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
    groups: dict[object, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(_group_key(s, by, i), []).append(i)
    if len(groups) < 2:
        what = "samples" if by is None else f"distinct values of {by!r}"
        raise UserError(f"cannot split: need at least 2 {what}, found {len(groups)}")
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    target = min(max(round(ratio * len(samples)), 1), len(samples) - 1)
    train_idx: list[int] = []
    test_idx: list[int] = []
    for n, key in enumerate(keys):
        # Fill train up to the target; the last group always goes to test, so neither side is
        # empty (the first group always goes to train since target >= 1).
        if len(train_idx) < target and n < len(keys) - 1:
            train_idx.extend(groups[key])
        else:
            test_idx.extend(groups[key])
    return [samples[i] for i in sorted(train_idx)], [samples[i] for i in sorted(test_idx)]


def split_manifest(options: SplitOptions) -> SplitResult:
    """Write the train and test manifests; refuses to overwrite anything without force."""
    source = Path(options.manifest)
    train_path, test_path = Path(options.train), Path(options.test)
    if train_path.resolve() == test_path.resolve():
        raise UserError("--train and --test must be different files")
    for out in (train_path, test_path):
        if out.resolve() == source.resolve():
            raise UserError(f"{out}: an output must not be the input manifest")
        if out.exists() and not options.force:
            raise UserError(f"{out}: already exists; pass --force to overwrite it")
    samples = read_manifest(source)
    train, test = split_samples(samples, options.ratio, options.seed, options.by)
    write_manifest(train, train_path, force=options.force)
    write_manifest(test, test_path, force=options.force)
    logger.info("split %d samples: %d train, %d test", len(samples), len(train), len(test))
    return SplitResult(train_path, test_path, len(train), len(test))
