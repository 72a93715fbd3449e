"""Trainer checkpoints and the final model, written atomically (temp dir, fsync, rename).

A checkpoint directory ``<root>/step-000010/`` holds

* ``model.safetensors`` (full fine-tuning: every weight, tied ones once) or
  ``adapter.safetensors`` (LoRA: the adapter weights only),
* ``trainer_state.pt``: optimizer, scheduler and torch RNG states,
* ``state.json``: step, epoch, position in the epoch, the epoch's batch plan, python and
  numpy RNG states, elapsed time and a fingerprint of data and config.

It is built under ``<root>/.tmp-step-000010`` and renamed into place, so any
``step-*`` directory that exists is complete; a kill mid-write leaves only a temp dir
that the next save removes.
"""

from __future__ import annotations

import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from etagent.utils.io import apply_umask_tree, atomic_write_json, read_json

STEP_PREFIX = "step-"


def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """(json-able python/numpy states, tensor states for torch.save)."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    return plain, tensors


def restore_rng(plain: dict[str, Any], tensors: dict[str, Any]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])


def _fsync_dir(path: Path) -> None:
    for p in [*path.rglob("*"), path]:
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp dir beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed earlier attempt
    tmp.mkdir()
    try:
        yield tmp
        apply_umask_tree(tmp)  # safetensors writes 0600; the run dir follows the umask
        _fsync_dir(tmp)
        if path.exists():
            old = path.parent / f".old-{path.name}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name[len(STEP_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model,
    optimizer,
    scheduler,
    state: dict[str, Any],
    adapter_only: bool,
    keep_last: int = 2,
) -> Path:
    """Write ``<root>/step-<step>`` atomically and prune all but the newest ``keep_last``."""
    root = Path(root)
    path = root / f"{STEP_PREFIX}{step:06d}"
    plain_rng, tensor_rng = capture_rng()
    with atomic_dir(path) as tmp:
        if adapter_only:
            from peft import get_peft_model_state_dict

            weights = {k: v.detach().contiguous().clone() for k, v in get_peft_model_state_dict(model).items()}
            save_file(weights, str(tmp / "adapter.safetensors"))
        else:
            save_model(model, str(tmp / "model.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": tensor_rng},
            tmp / "trainer_state.pt",
        )
        atomic_write_json(tmp / "state.json", {**state, "step": step, "rng": plain_rng}, indent=None)
    if keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | os.PathLike, model, optimizer, scheduler, adapter_only: bool) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and every RNG; return the ``state.json`` dict."""
    path = Path(path)
    state = read_json(path / "state.json")
    if adapter_only:
        from peft import set_peft_model_state_dict

        file = path / "adapter.safetensors"
        if not file.exists():
            raise ValueError(f"{path}: no adapter.safetensors (checkpoint of a full fine-tuning run? train.lora.enabled differs)")
        set_peft_model_state_dict(model, load_file(str(file)))
    else:
        file = path / "model.safetensors"
        if not file.exists():
            raise ValueError(f"{path}: no model.safetensors (checkpoint of a LoRA run? train.lora.enabled differs)")
        missing, unexpected = load_model(model, str(file), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}/model.safetensors does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    trainer = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    restore_rng(state.pop("rng"), trainer["rng"])
    return state


def save_final(model, tokenizer, path: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """``save_pretrained`` model + tokenizer (+ ``sft_summary.json``) into ``path`` atomically."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "sft_summary.json", summary)
    return path
