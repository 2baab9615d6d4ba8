"""The trainer's validation: the eval set decoded and scored by the code ``whispertune
evaluate`` runs (:func:`whispertune.evaluate.evaluate_samples` over a transcriber), on the
model being trained, in memory.

Why the same code: a validation figure is what picks the best epoch, and it must mean what
``whispertune evaluate`` would say of that checkpoint decoded the same way (same feature
extraction, prompt, normalization, output style and scoring). The decoding is fixed for
comparability across runs and epochs: beam ``--eval-beam-size`` (greedy by default), one
temperature, no fallback or no-speech guards, no rescoring.

Why it is fast: a run validates every epoch, a fifth of the default recipe's time before
issue 26. The encoder is most of a validation: its frozen layers run once a run
(:class:`FrozenEncoderPart`), and the rest runs in the training precision (bf16 autocast
where the run trains in it: 1.5x on a CPU with native bf16). The decoder stays in the
model's dtype: token by token, autocast's weight casts cost more than its matmuls save.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import replace
from pathlib import Path

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


class FrozenEncoderPart:
    """What the frozen part of the encoder makes of each eval batch, written by the first
    validation to a scratch file and read back by the later ones.

    Why: the layers below ``trained_layers`` (all of them with ``trained_layers`` 0) never
    change in a run, yet each validation ran them again on the same clips: the convolutions
    and 2 of whisper-base's 6 layers in the default recipe, a quarter of a validation. Kept in
    the dtype they were computed in, the later validations get the same tensors, so the same
    texts. Kept on disk, not in memory (98 MB at the default hold-out): held in memory across
    the training steps they raised the run's peak by 0.3 GB; read back, a batch's is a
    transient 3 MB a clip. The file is unnamed (gone with the process, even a killed one);
    batches are recognised by their features' bytes; past ``budget`` bytes nothing more is
    kept.
    """

    def __init__(self, trained_layers: int, directory: Path, budget: int = 2 << 30) -> None:
        self.trained_layers = trained_layers
        self.directory = directory
        self.budget = budget
        self.kept: dict[bytes, tuple[int, tuple[int, ...], object]] = {}  # offset, shape, dtype
        self.size = 0
        self.reused = 0  # batches that skipped the frozen part (for tests and logs)
        self._file = None

    def _write(self, key: bytes, tensor) -> None:
        import torch

        data = tensor.detach().contiguous().cpu()
        raw = data.view(-1).view(torch.uint8).numpy()
        if self.size + raw.nbytes > self.budget:
            return
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self.directory)
        os.pwrite(self._file.fileno(), raw, self.size)
        self.kept[key] = (self.size, tuple(data.shape), data.dtype)
        self.size += raw.nbytes

    def _read(self, key: bytes, device):
        import numpy as np
        import torch

        offset, shape, dtype = self.kept[key]
        count = int(np.prod(shape)) * dtype.itemsize
        raw = np.empty(count, np.uint8)
        os.preadv(self._file.fileno(), [raw], offset)
        return torch.from_numpy(raw).view(dtype).view(shape).to(device)

    def reusing(self, encoder) -> contextlib.AbstractContextManager:
        """Within this block ``encoder`` runs only its trained layers on a batch it has seen."""
        top = self.trained_layers

        def wrap(computed):
            def forward(input_features, *args, **kwargs):
                from transformers.modeling_outputs import BaseModelOutput

                from whispertune.train.encoder_cache import frozen_part
                from whispertune.train.model import run_top_encoder

                key = _batch_key(input_features)
                if key in self.kept:
                    self.reused += 1
                    hidden = self._read(key, input_features.device)
                else:  # the same computation as the encoder's own, kept for the next time
                    hidden = frozen_part(
                        lambda f: computed(f, *args, **kwargs), encoder, input_features, top
                    )
                    self._write(key, hidden)
                if top:
                    hidden = run_top_encoder(encoder, hidden, top, recompute=False)
                return BaseModelOutput(last_hidden_state=hidden)

            return forward

        from whispertune.train.model import forward_wrapped

        return forward_wrapped(encoder, wrap)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.kept.clear()
        self.size = 0


_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def encoder_precision(
    encoder, precision: str, device_type: str
) -> contextlib.AbstractContextManager:
    """Within this block ``encoder`` runs under ``precision``'s autocast (as it does in
    training; none for fp32) and hands the decoder float32, as it does without autocast."""
    if precision not in _AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    import torch

    dtype = getattr(torch, _AUTOCAST_DTYPES[precision])

    def wrap(computed):
        def forward(*args, **kwargs):
            with torch.autocast(device_type, dtype=dtype):
                out = computed(*args, **kwargs)
            if out[0].dtype != torch.float32:
                out["last_hidden_state"] = out[0].float()
            return out

        return forward

    from whispertune.train.model import forward_wrapped

    return forward_wrapped(encoder, wrap)


def _batch_key(features) -> bytes:
    array = features.detach().cpu().contiguous().numpy()
    digest = hashlib.blake2b(array.tobytes(), digest_size=16).digest()
    return digest + repr((array.shape, array.dtype)).encode()


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
        frozen: FrozenEncoderPart | None = None,
    ) -> None:
        self.processor = processor
        self.frozen = frozen
        self.samples = validation_samples(samples, options.data.language)
        self.decode = validation_decode(options, max_new_tokens(processor.tokenizer, samples))
        self.metric = metric
        self.device = str(device)
        self.style = style
        self.source = str(options.data.eval or options.data.train)
        self.precision = options.optim.resolved_precision()

    def score(
        self, model, progress: ProgressCallback | None = None, stage: str = STAGE
    ) -> float:
        """The CER/WER of ``model``; ``progress`` gets ``stage`` events (clips), and the model
        is back in its train/eval mode afterwards."""
        from whispertune.backends.hf import HFTranscriber
        from whispertune.evaluate import evaluate_samples
        from whispertune.train.model import top_encoder

        def restaged(event: ProgressEvent) -> None:
            if progress is not None:
                progress(replace(event, stage=stage))

        was_training = model.training
        model.eval()
        release_free_memory()  # what the steps freed, so the decoding does not add to it
        encoder = top_encoder(model)
        # best/ as published has the frozen layers of the model in training: the same weights
        reusing = self.frozen.reusing(encoder) if self.frozen else contextlib.nullcontext()
        device_type = self.device.split(":")[0]
        try:
            transcriber = HFTranscriber.from_loaded(
                model, self.processor, device=self.device, style=self.style
            )
            with reusing, encoder_precision(encoder, self.precision, device_type):
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
