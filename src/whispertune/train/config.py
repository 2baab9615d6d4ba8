"""Every training option, its default and why, in one place (CLI, YAML and web UI read it).

The options come in groups (data, lora, optim, augment, evaluation, run), each a dataclass, so
that code and a UI can take one group at a time. The CLI flags, YAML keys and ``run.json``
stay flat (``--lora-r``, ``lora_r:``): :mod:`whispertune.options` flattens nested option
dataclasses, which is also why a leaf keeps its full name (``lora.lora_r``, not ``lora.r``).
Why each default is what it is, with the measurements: docs/fine-tuning-recipe.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from whispertune.errors import UserError

METHODS = ("lora", "adalora", "full")
DEFAULT_ENCODER_LAYERS = 4
# Whisper's last timestamp token (<|30.00|>): the longest window a target can time.
MAX_TIMESTAMP = 30.0
_RECIPE = "see docs/fine-tuning-recipe.md"


@dataclass(kw_only=True)
class DataOptions:
    """What is trained on and scored against, and how clips become training samples."""

    train: Path = field(metadata={"help": "training manifest (JSONL)"})
    eval: Path | None = field(
        default=None, metadata={"help": "evaluation manifest; scored by CER/WER with generate"}
    )
    language: str | None = field(
        default=None,
        metadata={"help": "language of samples without a 'language' field (e.g. Chinese, en)"},
    )
    task: str = field(
        default="transcribe",
        metadata={"help": "transcribe or translate", "choices": ["transcribe", "translate"]},
    )
    timestamps: bool = field(
        default=True,
        metadata={
            "help": "train timestamped targets where a sample has segment times ('sentences' "
            "in the manifest, and every window of clips joined by --pack-seconds), as "
            "long-form transcription decodes; --no-timestamps: plain targets only ("
            + _RECIPE
            + ")"
        },
    )
    timestamp_ratio: float = field(
        default=0.5,
        metadata={
            "help": "with --timestamps: fraction of samples with 'sentences' trained "
            "timestamped, the rest plain (training only one form breaks the other)"
        },
    )
    no_speech_mix: float = field(
        default=0.05,
        metadata={
            "help": "add this many generated no-speech clips (silence, noise at -75 to -25 "
            "dBFS) per training clip, half trained as Whisper's no-speech token, half as an "
            "empty transcript, so the model learns to write nothing on silence. 0: none"
        },
    )
    pack_seconds: float = field(
        default=30.0,
        metadata={
            "help": "join consecutive clips of the manifest into training windows of up to "
            "this many seconds (each window's length drawn at random, so single clips stay "
            "in the mix): the encoder runs 30 s whatever the clip's length, so this trains "
            "on speech instead of padding (" + _RECIPE + "). 0: off"
        },
    )
    pack_pause: float = field(
        default=0.0,
        metadata={
            "help": "with --pack-seconds: put a silence of 0 to this many seconds (drawn per "
            "pause) between joined clips. 0: clips back to back (" + _RECIPE + ")"
        },
    )
    min_duration: float = field(default=0.5, metadata={"help": "skip clips shorter (s)"})
    max_duration: float = field(default=30.0, metadata={"help": "skip clips longer (s)"})
    max_label_tokens: int = field(
        default=448, metadata={"help": "skip targets longer than this (decoder limit 448)"}
    )

    def __post_init__(self) -> None:
        if self.pack_seconds > MAX_TIMESTAMP:
            raise UserError(f"--pack-seconds {self.pack_seconds:g}: at most {MAX_TIMESTAMP:g} s")
        if not 0 <= self.timestamp_ratio <= 1:
            raise UserError(f"--timestamp-ratio {self.timestamp_ratio:g}: give a value in [0, 1]")


@dataclass(kw_only=True)
class LoraOptions:
    """What is trained: the method, where adapters go, and how best/ is made of them."""

    method: str = field(
        default="lora",
        metadata={"help": "lora / adalora (peft adapters) or full fine-tuning", "choices": METHODS},
    )
    lora_scope: str = field(
        default="encoder",
        metadata={
            "help": "where LoRA/AdaLoRA adapters go: encoder = only the last --encoder-layers "
            "of the encoder (speaker and channel adaptation; the decoder, and with it the "
            "model's vocabulary, stays as it was); decoder = the decoder too (learns the "
            "transcripts' conventions, e.g. numerals, but on small data forgets words the "
            "training text lacks); all = every layer of both (slow, over-fits small data). "
            "With encoder/decoder the rest of the encoder is frozen and its output cached ("
            + _RECIPE
            + ")",
            "choices": ["all", "decoder", "encoder"],
        },
    )
    lora_r: int = field(
        default=8, metadata={"help": "LoRA rank (AdaLoRA: the target rank; " + _RECIPE + ")"}
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        metadata={"help": "module names that get adapters"},
    )
    adapter_scale: float = field(
        default=0.5,
        metadata={
            "help": "the adapter in best/ is the trained one times this (WiSE-FT: 0.5 is half "
            "way between the base model and the fine-tuned one; 1 keeps it as trained). The "
            "best epoch is still chosen at full scale. LoRA/AdaLoRA only (" + _RECIPE + ")"
        },
    )
    average_checkpoints: int = field(
        default=3,
        metadata={
            "help": "at the end of training, best/ holds the average of this many adapters: "
            "the best epoch's and the newest other checkpoints' (needs --save-total-limit of "
            "at least N-1). 1: the best epoch alone. LoRA only (" + _RECIPE + ")"
        },
    )
    freeze_encoder: bool = field(
        default=False,
        metadata={"help": "full fine-tuning: keep the encoder frozen (enables the encoder cache)"},
    )
    encoder_layers: int | None = field(
        default=None,
        metadata={
            "help": "with --lora-scope encoder/decoder or --freeze-encoder: train the last N "
            "encoder layers (speaker and channel adaptation); the encoder cache then holds "
            "the input of those layers, so a step runs N/L of the encoder "
            f"(default: {DEFAULT_ENCODER_LAYERS} for LoRA, 0 for full fine-tuning; "
            + _RECIPE
            + ")"
        },
    )
    encoder_cache: bool = field(
        default=True,
        metadata={
            "help": "when the encoder is frozen and augmentation is off, compute encoder "
            "outputs once per clip (fp16, on disk) and train the decoder on them"
        },
    )

    def __post_init__(self) -> None:
        if self.encoder_layers and not self.encoder_frozen():  # given explicitly
            raise UserError(
                "--encoder-layers N trains the last N encoder layers of an otherwise frozen "
                "encoder: use it with --lora-scope encoder or decoder (LoRA) or --freeze-encoder "
                "(full)"
            )
        if not 0 < self.adapter_scale <= 1:
            raise UserError(
                f"--adapter-scale {self.adapter_scale:g}: give a value in (0, 1] "
                "(1 keeps the adapter as trained)"
            )
        if self.average_checkpoints < 1:
            raise UserError(
                f"--average-checkpoints {self.average_checkpoints}: give 1 (the best epoch "
                "alone) or more"
            )

    @property
    def adapter(self) -> bool:
        """LoRA or AdaLoRA (a peft adapter), not full fine-tuning."""
        return self.method != "full"

    def encoder_frozen(self) -> bool:
        if self.method == "full":
            return self.freeze_encoder
        return self.lora_scope in ("decoder", "encoder")

    def trained_encoder_layers(self, available: int) -> int:
        """Encoder layers trained on top of a frozen encoder, for a model with ``available``."""
        if not self.encoder_frozen():
            return 0
        if self.encoder_layers is not None:
            return self.encoder_layers
        return min(available, DEFAULT_ENCODER_LAYERS) if self.adapter else 0


@dataclass(kw_only=True)
class OptimOptions:
    """How long and how fast: schedule, batch, precision and the seed."""

    epochs: float | None = field(
        default=None,
        metadata={
            "help": "passes over the training data (default: 6 with --pack-seconds, where a "
            "window holds 2 to 3 short clips, so a pass is under half the steps; 3 without)"
        },
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "stop after this many optimizer steps (overrides epochs)"}
    )
    batch_size: int = field(default=8, metadata={"help": "samples per step and process"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "peak learning rate (default: 2e-4 for LoRA/AdaLoRA, 1e-5 for full; "
            + _RECIPE
            + ")"
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warmup steps"})
    scheduler: str = field(
        default="linear",
        metadata={
            "help": "learning-rate decay after warmup",
            "choices": ["linear", "cosine", "constant"],
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing factor"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in backward: less memory, slower"}
    )
    recompute_encoder_layers: bool = field(
        default=True,
        metadata={
            "help": "on the encoder cache, the trained top encoder layers keep only their "
            "input, attention and projections for the backward pass and run the rest of "
            "their forward again there (the same gradients): at batch 8, 30 s windows, "
            "whisper-base, about 2 GB less memory for part of a forward of those layers "
            "(docs/benchmarks.md). "
            "--no-recompute-encoder-layers keeps the activations"
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (the default): bf16 autocast where the hardware computes it "
            "natively (a CPU with AVX512-BF16 or AMX, a GPU with bf16), else fp32 (emulated "
            "bf16 is slower than fp32); or fp32, bf16, fp16 (CUDA only)",
            "choices": ["fp32", "bf16", "fp16", "auto"],
        },
    )
    allocator: str = field(
        default="auto",
        metadata={
            "help": "auto: where the system has tcmalloc or jemalloc (Debian/Ubuntu: apt "
            "install libtcmalloc-minimal4), 'whispertune train' restarts itself with it "
            "preloaded, for steps about 1.5x faster on a CPU at a little more memory (glibc's "
            "allocator either hands a step's freed activations back to the OS, to fault "
            "them in again the next step, or keeps them in a heap that grows over a run); "
            "system: the allocator the process started with",
            "choices": ["auto", "system"],
        },
    )
    load_8bit: bool = field(
        default=False, metadata={"help": "load the base model in 8 bits (bitsandbytes + CUDA)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed (data order, dropout, init)"})

    def __post_init__(self) -> None:
        for flag, value in (("--batch-size", self.batch_size), ("--grad-accum", self.grad_accum)):
            if value < 1:
                raise UserError(f"{flag} {value}: give at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps {self.max_steps}: give at least 1")

    def resolved_precision(self) -> str:
        """fp32, bf16 or fp16: what ``--precision`` means on this machine (``auto``: bf16 on a
        GPU that supports it or a CPU with native bf16 instructions, fp32 elsewhere)."""
        if self.precision != "auto":
            return self.precision
        import torch

        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        from whispertune.train.hardware import cpu_has_bf16

        return "bf16" if cpu_has_bf16() else "fp32"


@dataclass(kw_only=True)
class AugmentOptions:
    """Waveform and spectrogram augmentation (all off by default)."""

    noise_dir: Path | None = field(
        default=None, metadata={"help": "folder of noise recordings mixed in at random SNR"}
    )
    noise_prob: float = field(default=0.0, metadata={"help": "probability of adding noise"})
    noise_snr: list[float] = field(
        default_factory=lambda: [5.0, 30.0], metadata={"help": "SNR range in dB", "nargs": 2}
    )
    speed_prob: float = field(default=0.0, metadata={"help": "probability of speed perturbation"})
    speed_range: list[float] = field(
        default_factory=lambda: [0.9, 1.1], metadata={"help": "speed factor range", "nargs": 2}
    )
    volume_prob: float = field(default=0.0, metadata={"help": "probability of a volume change"})
    volume_db: list[float] = field(
        default_factory=lambda: [-10.0, 6.0], metadata={"help": "gain range in dB", "nargs": 2}
    )
    shift_prob: float = field(default=0.0, metadata={"help": "probability of a time shift"})
    shift_ms: float = field(default=500.0, metadata={"help": "maximum time shift (ms)"})
    spec_augment: bool = field(
        default=False, metadata={"help": "SpecAugment (time/frequency masking) in the model"}
    )

    def active(self) -> bool:
        """Whether any augmentation is on (then the encoder's input changes every epoch and
        cannot be cached)."""
        probs = (self.noise_prob, self.speed_prob, self.volume_prob, self.shift_prob)
        return any(p > 0 for p in probs) or self.spec_augment


@dataclass(kw_only=True)
class EvaluationOptions:
    """How the best checkpoint is chosen: what is scored, how often and how decoded."""

    holdout: float = field(
        default=0.1,
        metadata={
            "help": "without --eval: keep the last this fraction of --train out of training "
            "(at least 8, at most 300 clips; the manifest's last lines, so a recording "
            "session or article stays on one side) and keep the checkpoint with the best "
            "CER/WER on it; small data over-fits within an epoch or two, and the loss does "
            "not show it. 0: train on everything and keep the last checkpoint"
        },
    )
    eval_steps: int | None = field(
        default=None, metadata={"help": "evaluate every N steps (default: once per epoch)"}
    )
    eval_beam_size: int = field(default=1, metadata={"help": "beam width when evaluating"})
    eval_batch_size: int = field(default=16, metadata={"help": "clips per evaluation batch"})
    eval_limit: int | None = field(default=None, metadata={"help": "score only N eval clips"})
    metric: str = field(
        default="auto",
        metadata={"help": "cer, wer or auto (by language)", "choices": ["auto", "cer", "wer"]},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "stop after N evaluations without improvement"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.holdout < 1:
            raise UserError(f"--holdout {self.holdout:g}: give a fraction in [0, 1)")


@dataclass(kw_only=True)
class RunOptions:
    """Where the run is written, how often it is saved, and how the process runs it."""

    output: Path = field(metadata={"help": "run directory: checkpoints, metrics, best model"})
    save_steps: int | None = field(
        default=None, metadata={"help": "checkpoint every N steps (default: once per epoch)"}
    )
    save_total_limit: int = field(
        default=2, metadata={"help": "keep this many recent checkpoints (the best is kept too)"}
    )
    resume: bool = field(default=False, metadata={"help": "continue the run in --output"})
    force: bool = field(default=False, metadata={"help": "start over in a non-empty --output"})
    num_workers: int = field(default=1, metadata={"help": "data loading worker processes"})
    log_steps: int = field(default=5, metadata={"help": "log loss and learning rate every N steps"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0 = default)"})


@dataclass(kw_only=True)
class TrainOptions:
    """All options of one training run, by group; ``options.build(TrainOptions, flat_dict)``
    fills the groups from flat names."""

    model: str = field(
        default="builtin:base",
        metadata={
            "help": "model to fine-tune: builtin:base, a transformers/CTranslate2 "
            "directory, an adapter directory or a hub id"
        },
    )
    data: DataOptions
    lora: LoraOptions = field(default_factory=LoraOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)
    run: RunOptions

    def __post_init__(self) -> None:
        if self.lora.method == "full" and self.optim.load_8bit:
            raise UserError("--load-8bit works with LoRA/AdaLoRA, not full fine-tuning")

    def total_epochs(self) -> float:
        if self.optim.epochs is not None:
            return self.optim.epochs
        return 6.0 if self.data.pack_seconds > 0 else 3.0

    def peak_lr(self) -> float:
        if self.optim.learning_rate is not None:
            return self.optim.learning_rate
        return 2e-4 if self.lora.adapter else 1e-5

    def augmenting(self) -> bool:
        return self.augment.active()

    def uses_encoder_cache(self) -> bool:
        """Whether steps read cached encoder outputs: the encoder (below its trained top
        layers) is frozen and nothing changes its input between epochs."""
        return self.lora.encoder_cache and self.lora.encoder_frozen() and not self.augmenting()
