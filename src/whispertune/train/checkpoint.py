"""Checkpoints that a crash cannot corrupt, and resume that continues exactly where a run was.

A checkpoint is written into a temporary folder and renamed into place; ``latest`` (a small
text file, itself replaced atomically) names the newest complete checkpoint. A run killed
mid-save leaves at worst a ``*.tmp`` folder that the next save or resume removes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import struct
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whispertune.errors import UserError
from whispertune.output_style import OutputStyle, write_style
from whispertune.staging import atomic_text_file

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
RUN_FILE = "run.json"
_STEP_NAME = re.compile(r"step-(\d+)")


@dataclass
class TrainerState:
    """Where training is: enough to continue bit-for-bit (with the saved RNG states)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed (this rank)
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoints_saved: int = 0  # pruned ones included: says why few are left to average

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _replace_text(path: Path, text: str) -> None:
    with atomic_text_file(path) as fh:
        fh.write(text)


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    model,
    optimizer,
    scheduler,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    style: OutputStyle | None = None,
) -> Path:
    """Write checkpoints/step-N atomically, point ``latest`` at it, prune old ones (the best
    checkpoint is never pruned)."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:07d}"
    final = root / name
    tmp = root / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    if style is not None:
        write_style(tmp, style)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "extra": extra or {},
        },
        tmp / "training_state.pt",
    )
    (tmp / "trainer_state.json").write_text(state.to_json(), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _replace_text(run_dir / LATEST, name + "\n")
    prune_checkpoints(run_dir, keep, state.best_step)
    return final


def completed_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first (step numbers are zero-padded); folders
    being written (``.tmp``) or set aside as damaged (``.damaged``) are not among them."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _STEP_NAME.fullmatch(p.name) and p.is_dir())


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a ``step-N`` checkpoint was saved at."""
    return int(checkpoint.name.split("-")[1])


def prune_checkpoints(run_dir: Path, keep: int, best_step: int | None) -> None:
    root = run_dir / CHECKPOINTS
    for stale in root.glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    done = completed_checkpoints(run_dir)
    protected = {f"step-{best_step:07d}"} if best_step is not None else set()
    removable = [p for p in done if p.name not in protected]
    for p in removable[: max(0, len(removable) - max(1, keep))]:
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, if it is there (not verified: see
    :func:`resume_checkpoint`)."""
    pointer = run_dir / LATEST
    if not pointer.is_file():
        return None
    path = run_dir / CHECKPOINTS / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "trainer_state.json").is_file() else None


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole, or None: its header must parse and its tensors'
    data must end exactly where the file ends (a truncated or padded file does not)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{path.name}: {size} bytes, no header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"{path.name}: truncated in its header"
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            return f"{path.name}: unreadable header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        return f"{path.name}: {size} bytes where its header says {expected} (truncated?)"
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it verifies: its trainer
    state parses, its training state (a zip written by torch.save) passes every member's
    CRC, and its weight files are whole. Cheap next to loading it (nothing is unpickled),
    so resume can look through several."""
    try:
        TrainerState.from_json((checkpoint / "trainer_state.json").read_text("utf-8"))
    except (OSError, ValueError, TypeError) as e:
        return f"trainer_state.json: {e}"
    try:
        with zipfile.ZipFile(checkpoint / "training_state.pt") as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"training_state.pt: {bad} fails its CRC"
    except (OSError, zipfile.BadZipFile) as e:
        return f"training_state.pt: {e}"
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not weights:
        return "no weights (*.safetensors)"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem is not None:
            return problem
    return None


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that verifies, or None where there is none.

    Why not simply ``latest``: the pointer may name a checkpoint that was damaged (a full
    disk, a copy cut short) or deleted; starting from step 0 then would overwrite the older
    checkpoints. Every checkpoint is tried, newest first (one newer than the pointer is
    complete: it is renamed into place before the pointer is written); the ones that fail
    are renamed ``step-N.damaged`` (kept for inspection, never overwritten, never resumed
    from), each with a warning saying why, and the one chosen is named. Raises UserError
    where checkpoints exist and none verifies: restarting would destroy them.
    """
    pointer = run_dir / LATEST
    named = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    candidates = list(reversed(completed_checkpoints(run_dir)))
    damaged = []
    for checkpoint in candidates:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if checkpoint.name != named:
                logger.warning(
                    "resuming from %s, the newest checkpoint that verifies (%s names %s)",
                    checkpoint.name,
                    LATEST,
                    named or "none",
                )
            return checkpoint
        aside = checkpoint.with_name(checkpoint.name + ".damaged")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(checkpoint, aside)
        logger.warning("%s is damaged (%s): set aside as %s", checkpoint.name, problem, aside.name)
        damaged.append(checkpoint.name)
    if damaged:
        raise UserError(
            f"{run_dir}: no checkpoint verifies ({', '.join(damaged)} damaged, now *.damaged); "
            "pass --force instead of --resume to start over"
        )
    return None


def load_training_state(checkpoint: Path) -> tuple[TrainerState, dict[str, Any]]:
    state = TrainerState.from_json((checkpoint / "trainer_state.json").read_text("utf-8"))
    blob = torch.load(checkpoint / "training_state.pt", weights_only=False)
    return state, blob


def scale_adapter(model_dir: Path, scale: float) -> bool:
    """Multiply a saved LoRA/AdaLoRA adapter's update by ``scale``, through its alpha.

    Why: the update is ``alpha / r * B @ A`` (AdaLoRA: ``alpha / rank``), so scaling alpha
    scales the update and nothing else: the model is the base model plus ``scale`` times what
    training changed (WiSE-FT's weight-space mix of the base and the fine-tuned model). Every
    loader (merge, the CTranslate2 and GGML converters, peft) reads alpha from this file, so
    the scale goes wherever the adapter goes. Returns False for a directory without an adapter
    (full fine-tuning), which is left as it is.
    """
    path = model_dir / "adapter_config.json"
    if not path.is_file():
        return False
    config = json.loads(path.read_text(encoding="utf-8"))

    def scaled(alpha: float) -> float:
        value = alpha * scale
        return int(value) if float(value).is_integer() else value

    config["lora_alpha"] = scaled(config["lora_alpha"])
    config["alpha_pattern"] = {k: scaled(v) for k, v in config.get("alpha_pattern", {}).items()}
    _replace_text(path, json.dumps(config, indent=2))
    return True


def average_adapters(model_dir: Path, others: list[Path]) -> bool:
    """Make the LoRA adapter in ``model_dir`` the uniform average of itself and ``others``
    (checkpoints of the same run), exactly: the update of each is ``s * B_i @ A_i``, and
    ``A = [A_1; ...; A_k]``, ``B = [B_1 ... B_k] / k`` with rank ``k * r`` and alpha ``k * alpha``
    (so ``s`` is unchanged) give ``s * mean(B_i @ A_i)``.

    Why: on half an hour of speech each epoch's adapter fits its own share of noise; averaging
    the best epoch's with the last ones (checkpoint averaging, as in ESPnet and Polyak-Ruppert
    averaging) keeps what they agree on. On the selection split it beat the best epoch alone
    on both the clips and the long-form proxy (docs/fine-tuning-recipe.md). The average is an
    ordinary, larger-rank LoRA adapter, so merge, export and peft load it as any other.
    Returns False (and changes nothing) where that identity does not hold: no adapter, AdaLoRA
    (its ranks differ per checkpoint), DoRA, or per-module ranks.
    """
    path = model_dir / "adapter_config.json"
    if not others or not path.is_file():
        return False
    from safetensors.torch import load_file, save_file

    config = json.loads(path.read_text(encoding="utf-8"))
    if (
        config.get("peft_type") != "LORA"
        or config.get("use_dora")
        or config.get("rank_pattern")
        or config.get("alpha_pattern")
    ):
        return False
    weights_file = "adapter_model.safetensors"
    tensors = [load_file(d / weights_file) for d in [model_dir, *others]]
    if any(t.keys() != tensors[0].keys() for t in tensors):
        raise ValueError(f"checkpoints {others} do not hold the same adapter as {model_dir}")
    k = len(tensors)
    averaged = {}
    for name, first in tensors[0].items():
        if "lora_A" in name:
            averaged[name] = torch.cat([t[name] for t in tensors], dim=0).contiguous()
        elif "lora_B" in name:
            averaged[name] = (torch.cat([t[name] for t in tensors], dim=1) / k).contiguous()
        else:  # anything else trained alongside (modules_to_save): the plain mean
            averaged[name] = (sum(t[name] for t in tensors) / k).to(first.dtype).contiguous()
    tmp = model_dir / (weights_file + ".tmp")
    save_file(averaged, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, model_dir / weights_file)
    keep = config["lora_alpha"] * (math.sqrt(k) if config.get("use_rslora") else k)
    config["r"] = config["r"] * k
    config["lora_alpha"] = int(keep) if float(keep).is_integer() else keep
    _replace_text(path, json.dumps(config, indent=2))
    return True


def publish_best(
    run_dir: Path,
    checkpoint: Path,
    processor,
    adapter_scale: float = 1.0,
    average_with: list[Path] | None = None,
) -> list[Path]:
    """Copy a checkpoint's model files to run_dir/best (atomically), with the processor files
    so ``best`` is a model directory every command loads; an adapter is averaged with those of
    ``average_with`` (see :func:`average_adapters`), then scaled by ``adapter_scale`` (see
    :func:`scale_adapter`). Returns the checkpoints best/ is made of: ``checkpoint`` alone
    where the adapter was not averaged."""
    best = run_dir / BEST
    tmp = run_dir / (BEST + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns("training_state.pt"))
    made_of = [checkpoint]
    if average_with and average_adapters(tmp, average_with):
        made_of += average_with
    what = (
        "the average of " + ", ".join(p.name for p in made_of)
        if len(made_of) > 1
        else checkpoint.name
    )
    if adapter_scale != 1 and scale_adapter(tmp, adapter_scale):
        what += f", its adapter scaled by {adapter_scale:g} (--adapter-scale)"
    logger.info("best/: %s", what)
    processor.tokenizer.save_pretrained(tmp)
    processor.feature_extractor.save_pretrained(tmp)
    old = run_dir / (BEST + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)
    return made_of
