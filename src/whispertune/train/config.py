"""Every training option, its default and why, in one place (CLI, YAML and web UI read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("lora", "adalora", "full")
DEFAULT_ENCODER_LAYERS = 4


@dataclass
class TrainOptions:
    train: Path = field(metadata={"help": "training manifest (JSONL)"})
    output: Path = field(metadata={"help": "run directory: checkpoints, metrics, best model"})
    model: str = field(
        default="builtin:base",
        metadata={
            "help": "model to fine-tune: builtin:base, a transformers/CTranslate2 "
            "directory, an adapter directory or a hub id"
        },
    )
    eval: Path | None = field(
        default=None, metadata={"help": "evaluation manifest; scored by CER/WER with generate"}
    )
    method: str = field(
        default="lora",
        metadata={"help": "lora / adalora (peft adapters) or full fine-tuning", "choices": METHODS},
    )
    language: str | None = field(
        default=None,
        metadata={"help": "language of samples without a 'language' field (e.g. Chinese, en)"},
    )
    task: str = field(
        default="transcribe",
        metadata={"help": "transcribe or translate", "choices": ["transcribe", "translate"]},
    )
    # --- what is trained
    lora_scope: str = field(
        default="encoder",
        metadata={
            "help": "where LoRA/AdaLoRA adapters go: encoder = only the last --encoder-layers "
            "of the encoder (speaker and channel adaptation; the decoder, and with it the "
            "model's vocabulary, stays as it was); decoder = the decoder too (learns the "
            "transcripts' conventions, e.g. numerals, but on small data it forgets words "
            "that are not in the training text); all = every layer of both (the seed's "
            "recipe; slow, over-fits small data). With encoder/decoder the rest of the "
            "encoder is frozen and its output cached",
            "choices": ["all", "decoder", "encoder"],
        },
    )
    lora_r: int = field(
        default=8,
        metadata={"help": "LoRA rank (AdaLoRA: the target rank); 8 matched 16 on small data"},
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    adapter_scale: float = field(
        default=0.5,
        metadata={
            "help": "the adapter in best/ is the trained one times this (WiSE-FT: half way "
            "between the base model and the fine-tuned one). The best epoch is still chosen "
            "at full scale. 0.5 beat 1.0 on both the validation clips and the long-form "
            "proxy (docs/fine-tuning-recipe.md); 1 keeps the adapter as trained. "
            "LoRA/AdaLoRA only"
        },
    )
    average_checkpoints: int = field(
        default=3,
        metadata={
            "help": "at the end of training, best/ holds the average of this many adapters: "
            "the best epoch's and the newest other checkpoints' (checkpoint averaging; "
            "needs --save-total-limit of at least N-1). It beat the best epoch alone on the "
            "validation clips and the long-form proxy (docs/fine-tuning-recipe.md). "
            "1: the best epoch alone. LoRA only"
        },
    )
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        metadata={"help": "module names that get adapters"},
    )
    freeze_encoder: bool = field(
        default=False,
        metadata={"help": "full fine-tuning: keep the encoder frozen (enables the encoder cache)"},
    )
    encoder_layers: int | None = field(
        default=None,
        metadata={
            "help": "with --lora-scope encoder/decoder or --freeze-encoder: train the last N "
            "encoder layers (speaker and channel adaptation: on small data the largest "
            "single gain measured, see docs/fine-tuning-recipe.md); the encoder cache then "
            "holds the input of those layers, so a step runs N/L of the encoder "
            f"(default: {DEFAULT_ENCODER_LAYERS} for LoRA, 0 for full fine-tuning)"
        },
    )
    encoder_cache: bool = field(
        default=True,
        metadata={
            "help": "when the encoder is frozen and augmentation is off, compute encoder "
            "outputs once per clip (fp16, on disk) and train the decoder on them"
        },
    )
    # --- optimisation
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
            "help": "peak learning rate (default: 2e-4 for LoRA/AdaLoRA, 1e-5 for full; the "
            "seed's 1e-3 over-fits small data within an epoch)"
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
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32, bf16 (CPU with AVX512-BF16 or GPU) or fp16 (CUDA only)",
            "choices": ["fp32", "bf16", "fp16"],
        },
    )
    load_8bit: bool = field(
        default=False, metadata={"help": "load the base model in 8 bits (bitsandbytes + CUDA)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed (data order, dropout, init)"})
    # --- targets
    timestamps: bool = field(
        default=True,
        metadata={
            "help": "train timestamped targets where a sample has segment times: 'sentences' "
            "in the manifest, and every window of clips joined by --pack-seconds. Long-form "
            "transcription decodes 30 s windows with timestamps; against the base, an encoder "
            "adapted on plain targets lost 1.6 points of long-form CER, one trained on both "
            "forms 1.2 (docs/fine-tuning-recipe.md). --no-timestamps: plain targets only"
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
            "empty transcript: a fine-tune on speech alone keeps the base model's habit of "
            "writing text on silence when no VAD is in front of it. 0: none"
        },
    )
    pack_seconds: float = field(
        default=30.0,
        metadata={
            "help": "join consecutive clips of the manifest into training windows of up to "
            "this many seconds (each window's length drawn at random, so single clips stay "
            "in the mix): Whisper's encoder runs 30 s whatever the clip's length, so short "
            "clips waste most of it on padding, and the adapted encoder layers never see a "
            "window full of speech as in long-form audio (validation CER 19.0 -> 17.9 %% at "
            "the same cost, see docs/fine-tuning-recipe.md). 0: off"
        },
    )
    pack_pause: float = field(
        default=0.0,
        metadata={
            "help": "with --pack-seconds: put a silence of 0 to this many seconds (drawn per "
            "pause) between joined clips, as a continuous recording pauses between "
            "sentences. 0: clips back to back, the default: recorded clips begin and end "
            "with a little quiet already, and 0-1 s more did not help on validation "
            "(docs/fine-tuning-recipe.md)"
        },
    )
    # --- data filters
    min_duration: float = field(default=0.5, metadata={"help": "skip clips shorter (s)"})
    max_duration: float = field(default=30.0, metadata={"help": "skip clips longer (s)"})
    max_label_tokens: int = field(
        default=448, metadata={"help": "skip targets longer than this (decoder limit 448)"}
    )
    # --- augmentation (off by default)
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
    # --- evaluation, checkpoints
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
    save_steps: int | None = field(
        default=None, metadata={"help": "checkpoint every N steps (default: once per epoch)"}
    )
    save_total_limit: int = field(
        default=2, metadata={"help": "keep this many recent checkpoints (the best is kept too)"}
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
    # --- run control
    resume: bool = field(default=False, metadata={"help": "continue the run in --output"})
    force: bool = field(default=False, metadata={"help": "start over in a non-empty --output"})
    num_workers: int = field(default=1, metadata={"help": "data loading worker processes"})
    log_steps: int = field(default=5, metadata={"help": "log loss and learning rate every N steps"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0 = default)"})

    def total_epochs(self) -> float:
        if self.epochs is not None:
            return self.epochs
        return 6.0 if self.pack_seconds > 0 else 3.0

    def peak_lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-5 if self.method == "full" else 2e-4

    def trained_encoder_layers(self, available: int) -> int:
        """Encoder layers trained on top of a frozen encoder, for a model with ``available``."""
        if not self.encoder_frozen():
            return 0
        if self.encoder_layers is not None:
            return self.encoder_layers
        return min(available, DEFAULT_ENCODER_LAYERS) if self.method != "full" else 0

    def encoder_frozen(self) -> bool:
        if self.method == "full":
            return self.freeze_encoder
        return self.lora_scope in ("decoder", "encoder")

    def augmenting(self) -> bool:
        return (
            any(
                p > 0 for p in (self.noise_prob, self.speed_prob, self.volume_prob, self.shift_prob)
            )
            or self.spec_augment
        )
