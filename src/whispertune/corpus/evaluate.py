"""``whispertune corpus evaluate``: ``whispertune evaluate`` for test sets too large for one
machine, on Ray Data, with the same report.

Each actor loads the model once and scores batches of the manifest with
:func:`whispertune.evaluate.evaluate_samples` (the one evaluation every command runs); the
driver adds the batches up. Error counts add up exactly (substitutions, deletions and
insertions are counted per utterance), so CER/WER equal a single-process run's for the same
hypotheses; the metric is chosen once on the driver over the whole manifest, so every batch
normalizes and counts alike.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from whispertune import options as _options
from whispertune.backends.base import DecodeOptions
from whispertune.corpus.cluster import ClusterOptions, connect, plan_actors, runtime_env_vars
from whispertune.corpus.models import ActorModel, local_model, prepare_model
from whispertune.data.manifest import parse_line, read_manifest
from whispertune.errors import UserError
from whispertune.evaluate import (
    EvaluateOptions,
    EvaluationReport,
    UtteranceResult,
    choose_metric,
    evaluate_samples,
    write_utterances,
)
from whispertune.progress import ProgressCallback, Reporter, check_cancel
from whispertune.text import NormalizeOptions

logger = logging.getLogger(__name__)

STAGE = "corpus-evaluate"


@dataclass
class CorpusEvaluateOptions(EvaluateOptions):
    """``whispertune evaluate``'s options plus where and how wide to run."""

    cluster: ClusterOptions = field(default_factory=ClusterOptions)


class EvaluateActor:
    """The ``map_batches`` class: loads the model once, scores each batch of samples; one
    output row (JSON text) per batch with its counts and utterances."""

    def __init__(
        self,
        model: ActorModel,
        decode: dict[str, Any],
        normalize: dict[str, Any],
        metric: str,
        pack: bool,
        source: str,
    ) -> None:
        from whispertune import api

        self.model = api.load_model(local_model(model))
        self.decode = _options.build(DecodeOptions, decode, source="options")
        self.normalize = _options.build(NormalizeOptions, normalize, source="options")
        self.metric = metric
        self.pack = pack
        self.source = source

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        samples = [
            parse_line(json.loads(str(text)), Path("/"), f"{self.source}:{line}", int(line))
            for text, line in zip(batch["sample"], batch["line"], strict=True)
        ]
        try:
            report = evaluate_samples(
                self.model.transcriber,
                samples,
                decode=self.decode,
                normalize=self.normalize,
                metric=self.metric,
                pack=self.pack,
                source=self.source,
                model=self.model.name,
            )
        except UserError as e:  # an unreadable clip: the driver stops the job with it
            return {"result": [json.dumps({"error": str(e)}, ensure_ascii=False)]}
        out = {
            "substitutions": report.substitutions,
            "deletions": report.deletions,
            "insertions": report.insertions,
            "reference_length": report.reference_length,
            "audio_seconds": report.audio_seconds,
            "backend": report.backend,
            "utterances": [u.__dict__ for u in report.utterances],
        }
        return {"result": [json.dumps(out, ensure_ascii=False)]}


def evaluate_corpus(
    options: CorpusEvaluateOptions,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> EvaluationReport:
    """Score ``options.load`` on ``options.manifest`` across Ray actors; the report (and the
    ``output`` per-utterance file) are those ``whispertune evaluate`` gives. ``progress`` gets
    ``ProgressEvent(stage="corpus-evaluate", unit="clip")``."""
    from whispertune.languages import resolved_language

    samples = read_manifest(options.manifest)
    if options.limit:
        samples = samples[: options.limit]
    if not samples:
        raise UserError(f"{options.manifest}: no samples to evaluate")
    decode = replace(options.decode, language=resolved_language(options.decode.language))
    metric = choose_metric(options.metric, samples, decode.language)
    source = str(options.manifest)
    items = [
        {"line": s.line, "sample": json.dumps(s.to_json(), ensure_ascii=False)} for s in samples
    ]
    batch = max(1, decode.batch_size)
    with connect(options.cluster.address) as ray:
        actors, threads = plan_actors(ray, options.cluster, options.load.threads)
        actors = min(actors, math.ceil(len(items) / batch))
        load = replace(options.load, threads=threads)
        model = prepare_model(load, ship=options.cluster.address is not None)
        # one batch a block: batches stream back as they are scored
        blocks = min(math.ceil(len(items) / batch), 10000)
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        env = runtime_env_vars()
        ds = ds.map_batches(
            EvaluateActor,
            batch_size=batch,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads,
            num_gpus=options.cluster.gpus_per_actor or None,
            fn_constructor_kwargs={
                "model": model,
                "decode": _options.to_dict(decode),
                "normalize": _options.to_dict(options.normalize),
                "metric": metric,
                "pack": options.pack,
                "source": source,
            },
            **({"runtime_env": {"env_vars": env}} if env else {}),
        )
        report = Reporter(progress, STAGE, total=len(samples), unit="clip")
        report(0, message=f"{len(samples)} clips on {actors} actor(s) x {threads} thread(s)")
        totals = dict.fromkeys(("substitutions", "deletions", "insertions", "reference_length"), 0)
        audio_seconds = 0.0
        backend = load.backend
        utterances: list[UtteranceResult] = []
        # timed from here, as `whispertune evaluate` times from after its model load; the
        # actors' start-up (and their model loads) fall inside it
        start = time.perf_counter()
        for row in ds.iter_rows():
            part = json.loads(row["result"])
            if "error" in part:
                raise UserError(part["error"])
            for key in totals:
                totals[key] += part[key]
            audio_seconds += part["audio_seconds"]
            backend = part["backend"]
            utterances.extend(UtteranceResult(**u) for u in part["utterances"])
            report(len(utterances))
            check_cancel(cancel, "corpus evaluation")
    wall = time.perf_counter() - start
    utterances.sort(key=lambda u: u.line)
    errors = totals["substitutions"] + totals["deletions"] + totals["insertions"]
    error_rate = errors / max(1, totals["reference_length"])
    report(len(samples), figures={metric: error_rate})
    result = EvaluationReport(
        metric=metric,
        error_rate=error_rate,
        substitutions=totals["substitutions"],
        deletions=totals["deletions"],
        insertions=totals["insertions"],
        reference_length=totals["reference_length"],
        clips=len(utterances),
        audio_seconds=audio_seconds,
        wall_seconds=wall,
        model=options.load.model,
        backend=backend,
        utterances=utterances,
    )
    if options.output is not None:
        write_utterances(result, options.output)
    return result
