"""The model to train: a Whisper checkpoint with LoRA/AdaLoRA adapters, or all (or only the
decoder's) weights trainable."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch

from whispertune.errors import UserError
from whispertune.models.loading import LoadedModel, load_processor
from whispertune.models.sources import ModelSource, resolve
from whispertune.train.config import LoraOptions, TrainOptions

logger = logging.getLogger(__name__)


def check_hardware(options: TrainOptions) -> None:
    """Refuse what this machine cannot do before any data is read or model loaded."""
    if options.optim.load_8bit:
        if not torch.cuda.is_available():
            raise UserError(
                "--load-8bit needs a CUDA GPU (bitsandbytes 8-bit kernels); none found. "
                "Train in fp32/bf16 on the CPU instead"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("--load-8bit needs bitsandbytes: pip install bitsandbytes") from None
    if options.optim.precision == "fp16" and not torch.cuda.is_available():
        raise UserError("--precision fp16 needs a CUDA GPU; on the CPU use fp32 or bf16")
    if options.optim.precision == "bf16" and not torch.cuda.is_available():
        from whispertune.train.hardware import cpu_has_bf16

        if not cpu_has_bf16():
            raise UserError(
                "--precision bf16: this CPU has no native bf16 (avx512_bf16/amx); use fp32"
            )


def lora_target_modules(options: LoraOptions, encoder_layer_count: int) -> list[str] | str:
    """Module names for peft: all matching modules, or only the decoder's (a regex), plus the
    last ``options.trained_encoder_layers`` encoder layers."""
    if options.lora_scope in ("decoder", "encoder"):
        alternatives = "|".join(options.lora_targets)
        layers = [r"decoder\.layers\.\d+"] if options.lora_scope == "decoder" else []
        trained = options.trained_encoder_layers(encoder_layer_count)
        if trained:
            first = encoder_layer_count - min(trained, encoder_layer_count)
            top = "|".join(str(i) for i in range(first, encoder_layer_count))
            layers.append(rf"encoder\.layers\.({top})")
        if not layers:
            raise UserError("--lora-scope encoder needs --encoder-layers N > 0")
        return rf"model\.({'|'.join(layers)})\.(self_attn|encoder_attn|fc1|fc2)?\.?({alternatives})"
    return list(options.lora_targets)


def build_model(options: TrainOptions, total_steps: int) -> LoadedModel:
    """Load the base and make the right parameters trainable.

    ``total_steps`` is in optimizer steps: AdaLoRA's rank schedule (tinit/tfinal/total_step)
    counts calls of ``update_and_allocate``, which happen once per optimizer step.
    """
    from transformers import WhisperForConditionalGeneration

    source: ModelSource = resolve(options.model)
    kwargs = {}
    if options.optim.load_8bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    model = WhisperForConditionalGeneration.from_pretrained(
        source.hf_dir(), dtype=torch.float32, **kwargs
    )
    if options.augment.spec_augment:
        model.config.apply_spec_augment = True
        model.config.mask_time_prob = 0.05
        model.config.mask_feature_prob = 0.05
        model.config.mask_feature_length = 10
    if (options.lora.encoder_layers or 0) > model.config.encoder_layers:
        raise UserError(
            f"--encoder-layers {options.lora.encoder_layers}: this model's encoder has "
            f"{model.config.encoder_layers} layers"
        )
    # generation-related values in the model config conflict with generation_config in v5
    model.config.forced_decoder_ids = None
    if options.lora.adapter:
        model = _with_adapter(model, source, options.lora, total_steps)
    else:
        if source.adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, source.adapter_dir).merge_and_unload()
        for p in model.parameters():
            p.requires_grad = True
        if options.lora.freeze_encoder:
            encoder = model.model.encoder
            for p in encoder.parameters():
                p.requires_grad = False
            trained = options.lora.trained_encoder_layers(len(encoder.layers))
            if trained:
                top = list(encoder.layers[-trained:]) + [encoder.layer_norm]
                for module in top:
                    for p in module.parameters():
                        p.requires_grad = True
    if options.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "trainable parameters: %s of %s (%.2f %%)",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return LoadedModel(model=model, processor=load_processor(source), source=source)


def _with_adapter(model, source: ModelSource, options: LoraOptions, total_steps: int):
    from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model

    if source.adapter_dir is not None:  # continue training an existing adapter
        if options.adapter_scale != 1:
            # a run's best/ is already scaled: scaling it again would shrink what it learned
            logger.warning(
                "%s is trained further as it is saved (a run's best/ is already scaled); "
                "best/ of this run scales it by %g again: --adapter-scale 1 keeps it, "
                "--resume continues a run from its full-scale checkpoint",
                source.adapter_dir,
                options.adapter_scale,
            )
        return PeftModel.from_pretrained(model, source.adapter_dir, is_trainable=True)
    targets = lora_target_modules(options, model.config.encoder_layers)
    if options.method == "lora":
        config = LoraConfig(
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=targets,
            bias="none",
        )
    else:
        config = AdaLoraConfig(
            **adalora_schedule(total_steps),
            init_r=options.lora_r * 3 // 2,
            target_r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=targets,
        )
    return get_peft_model(model, config)


def adalora_schedule(total_steps: int) -> dict[str, int]:
    """AdaLoRA's phases in optimizer steps: 10 % warm-up at full rank, rank budgeting, then
    the last 30 % at the final ranks (the seed computed this in samples and crashed)."""
    if total_steps < 3:
        raise UserError(f"AdaLoRA needs at least 3 optimizer steps, this run has {total_steps}")
    tinit = max(0, int(total_steps * 0.1))
    tfinal = max(1, int(total_steps * 0.3))
    if tinit >= total_steps - tfinal:
        tinit = 0
    return {
        "total_step": total_steps,
        "tinit": tinit,
        "tfinal": tfinal,
        "deltaT": max(1, total_steps // 50),
    }


@contextlib.contextmanager
def forward_wrapped(module: torch.nn.Module, wrap: Callable) -> Iterator[None]:
    """Within this block ``module`` runs ``wrap(its forward)``; blocks nest. How the trainer
    changes what a part of the model does for one pass (validation, the loss) without
    replacing the module: its weights, adapters and hooks stay where they are."""
    previous = vars(module).get("forward")
    module.forward = wrap(module.forward)
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


def top_encoder(model) -> torch.nn.Module:
    """The encoder of ``model`` (plain or peft-wrapped), for running its trained top layers on
    cached hidden states."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.model.encoder


def run_top_encoder(
    encoder, hidden: torch.Tensor, trained_layers: int, recompute: bool = True
) -> torch.Tensor:
    """Finish the encoder from the input of its last ``trained_layers`` layers (what the cache
    holds), the same computation as ``WhisperEncoder.forward`` from that layer on.

    ``recompute`` (in training): each layer keeps only its input, its attention's forward and
    its projections but fc1 for the backward pass and runs the rest of its forward again there
    (:mod:`whispertune.train.recompute`; the same gradients, bit for bit). Why: at batch 8 a
    30 s window's layer keeps ~0.6 GB of activations for backward (the 2048-wide MLP, its GELU
    and the LoRA dropout copies), 2.4 GB for 4 layers, most of a step's memory; the
    recomputed forward costs less than that memory costs in page faults and allocator
    retention. Recomputing only the MLP blocks was measured too (one step, batch 8, 2 cores:
    22.0 s against 25.5 s, but 3.1 GiB at its peak against 1.95: over the 3 GB a default run
    may take).
    """
    from whispertune.train.recompute import recomputed

    for layer in encoder.layers[-trained_layers:]:
        if recompute and torch.is_grad_enabled() and layer.training:
            hidden = recomputed(layer, hidden)
        else:
            hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)
