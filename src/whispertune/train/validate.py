"""The trainer's validation: the eval set decoded and scored by the code ``whispertune
evaluate`` runs (:func:`whispertune.evaluate.evaluate_samples` over a transcriber), on the
model being trained, in memory.

Why the same code: a validation figure is what picks the best epoch, and it must mean what
``whispertune evaluate`` would say of that checkpoint decoded the same way (same feature
extraction, prompt, normalization, output style and scoring). The decoding is fixed for
comparability across runs and epochs: beam ``--eval-beam-size`` (greedy by default), one
temperature, no fallback or no-speech guards, no rescoring.
"""

from __future__ import annotations

from dataclasses import replace

from whispertune.backends.base import DecodeOptions
from whispertune.data.manifest import Sample
from whispertune.output_style import OutputStyle
from whispertune.progress import ProgressCallback, ProgressEvent
from whispertune.train.config import TrainOptions
from whispertune.train.hardware import release_free_memory

# The progress stages: an evaluation during training, and the closing one of best/ as
# published (a stage of its own: it follows the last evaluation with no step in between).
STAGE = "validate"
PUBLISHED_STAGE = "validate-best"


def max_new_tokens(tokenizer, samples: list[Sample]) -> int:
    """Room for twice the longest reference: enough to see hallucinated repetition, without
    letting an untrained model babble 224 tokens per clip."""
    longest = max(len(tokenizer.encode(s.text, add_special_tokens=False)) for s in samples)
    return int(min(224, max(32, 2 * longest + 8)))


def validation_decode(options: TrainOptions, max_new: int) -> DecodeOptions:
    """How every validation decodes (see the module docstring)."""
    return DecodeOptions(
        language=None,  # each sample's own (validation_samples fills in --language)
        task=options.data.task,
        beam_size=options.evaluation.eval_beam_size,
        batch_size=options.evaluation.eval_batch_size,
        max_new_tokens=max_new,
        temperatures=[0.0],
        compression_ratio_threshold=None,
        log_prob_threshold=None,
        no_speech_threshold=None,
        rescore=False,
        numerals="auto",  # the style the training transcripts recorded
    )


def validation_samples(samples: list[Sample], language: str | None) -> list[Sample]:
    """The eval samples with ``--language`` given to those without their own, grouped by
    language (in order of first appearance): batches then hold one language each, as
    generate takes them best, and the figures are those the trainer always reported."""
    filled = [s if s.language or not language else replace(s, language=language) for s in samples]
    order: dict[str | None, int] = {}
    for s in filled:
        order.setdefault(s.language, len(order))
    return sorted(filled, key=lambda s: order[s.language])


class Validator:
    """Scores a model (the one in training, or best/ as published) on the eval set."""

    def __init__(
        self,
        processor,
        samples: list[Sample],
        options: TrainOptions,
        metric: str,
        device,
        style: OutputStyle,
    ) -> None:
        self.processor = processor
        self.samples = validation_samples(samples, options.data.language)
        self.decode = validation_decode(options, max_new_tokens(processor.tokenizer, samples))
        self.metric = metric
        self.device = str(device)
        self.style = style
        self.source = str(options.data.eval or options.data.train)

    def score(
        self, model, progress: ProgressCallback | None = None, stage: str = STAGE
    ) -> float:
        """The CER/WER of ``model``; ``progress`` gets ``stage`` events (clips), and the model
        is back in its train/eval mode afterwards."""
        from whispertune.backends.hf import HFTranscriber
        from whispertune.evaluate import evaluate_samples

        def restaged(event: ProgressEvent) -> None:
            if progress is not None:
                progress(replace(event, stage=stage))

        was_training = model.training
        model.eval()
        release_free_memory()  # what the steps freed, so the decoding does not add to it
        try:
            transcriber = HFTranscriber.from_loaded(
                model, self.processor, device=self.device, style=self.style
            )
            report = evaluate_samples(
                transcriber,
                self.samples,
                decode=self.decode,
                metric=self.metric,
                progress=restaged,
                source=self.source,
            )
        finally:
            if was_training:
                model.train()
            release_free_memory()
        return report.error_rate
