"""Action-space exploration fine-tuning (ASE, Part II-a): SFT of the seed policy on the pool.

``run_ase`` loads the seed policy, turns the flywheel's SFT selection (``flywheel/sft.jsonl``,
or the selection list a flywheel round hands its fine-tuner) into masked training
sequences (prompt and ``<result>`` tokens masked; sampled trajectories keep their sampled
ids, edited ones were encoded piecewise by the verifier), trains with
:func:`etagent.train.sft.train_sft` (full or LoRA per ``train.lora.enabled``; LoRA is merged)
and returns the path of the saved policy (``out_dir/final``).

Departures from the paper (method-spec §4): tool-result tokens are masked (the official
LLaMA-Factory SFT trains on them) and the prompt layout is the one used everywhere else.
Before/after dev metrics are the evaluation stage's job (run it on both policy paths).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from etagent.protocol import Grammar
from etagent.records import Trajectory, read_jsonl
from etagent.utils.io import atomic_write_json


def to_sequences(trajs: Iterable[Trajectory], tokenizer: Any, grammar: Grammar, max_len: int | None = None) -> list:
    from etagent.train.sequences import end_token_id, from_text, from_trajectory

    end = end_token_id(tokenizer)
    seqs = []
    for t in trajs:
        if not t.prompt_ids:
            raise ValueError(f"ASE: trajectory {t.id} has no prompt_ids")
        if t.response_ids:
            seqs.append(from_trajectory(t, max_len=max_len, end_id=end))
        else:  # edited without a tokenizer at verification time
            seqs.append(from_text(tokenizer, t.prompt_ids, t.response_text, grammar=grammar, max_len=max_len,
                                  meta={"id": t.id}))
    return seqs


def run_ase(policy_path: str | os.PathLike, selection: Sequence[Trajectory] | str | os.PathLike, cfg: Any,
            out_dir: str | os.PathLike, tracker: Any = None, *, grammar: Grammar, dtype: str, device: str,
            resume: bool = True) -> str:
    """SFT the seed policy at ``policy_path`` on the flywheel's SFT ``selection`` (trajectories,
    or the JSONL file of them, ``flywheel/sft.jsonl``).

    ``cfg`` is the ``train`` config (:class:`etagent.train.sft.SFTConfig`); ``grammar``, ``dtype``
    and ``device`` are the run's. Returns the new policy directory.
    """
    from etagent.models.factory import load_policy
    from etagent.train.sft import SFTConfig, train_sft

    sft_cfg = SFTConfig.coerce(cfg)
    trajs = list(read_jsonl(selection, Trajectory)) if isinstance(selection, (str, os.PathLike)) else list(selection)
    if not trajs:
        raise ValueError("ASE: the flywheel pool has no correct trajectory to train on")
    model, tokenizer = load_policy(policy_path, dtype=dtype, device=device)
    seqs = to_sequences(trajs, tokenizer, grammar, sft_cfg.max_len)
    out = Path(out_dir)
    train_sft(model, tokenizer, seqs, sft_cfg, out, tracker=tracker, stage="ase", resume=resume)
    strategies = Counter(str(t.meta.get("strategy", "?")) for t in trajs)
    atomic_write_json(out / "ase_data.json", {"policy_in": str(policy_path), "trajectories": len(trajs),
                                              "questions": len({t.example_id for t in trajs}),
                                              "by_strategy": dict(strategies)})
    return str(out / "final")
