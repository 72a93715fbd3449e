"""Training sequences: (prompt + response) token ids with a loss mask (1 = the model is trained on it).

Two sources:

* :func:`from_trajectory` keeps a sampled trajectory's ids exactly as they were sampled
  (never re-encoded: decode/re-encode is not an identity, see cpu-feasibility.md), the
  prompt masked and the response masked as recorded (tool results 0);
* :func:`from_text` encodes a teacher-written or flywheel-edited response piecewise with the
  run's grammar (:meth:`etagent.protocol.Grammar.encode_response`: ``<result>`` blocks masked).

End-of-turn token (a decision, not in the paper): a response that ends with its closed
``</answer>`` gets one extra *trained* token, ``<|im_end|>`` (ChatML end of turn; Qwen2.5
Instruct's eos) or the tokenizer's eos when the vocabulary has no ``<|im_end|>``. The
model thus learns to stop after answering even under a backend that stops only on eos;
with the ``</answer>`` stop string it is never reached. Responses that do not end in an
answer (cut by a budget) get no end token, so the model is not taught to stop mid-task.
Sampled trajectories exclude eos (backends contract), so :func:`from_trajectory` only
appends it when asked with ``end_id``.

Truncation keeps the start (prompt and the first turns) and drops the tail; a sequence
whose loss mask becomes all zero carries no signal and is dropped by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from etagent import protocol

IM_END = "<|im_end|>"


@dataclass
class TrainSequence:
    ids: list[int]
    mask: list[int]  # 1 = loss on this token (as a label), 0 = context only
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = [int(i) for i in self.ids]
        self.mask = [int(m) for m in self.mask]
        if len(self.ids) != len(self.mask):
            raise ValueError(
                f"TrainSequence {self.meta.get('id', '?')}: {len(self.ids)} ids but {len(self.mask)} mask values"
            )
        if any(m not in (0, 1) for m in self.mask):
            raise ValueError(f"TrainSequence {self.meta.get('id', '?')}: mask values must be 0/1")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_loss_tokens(self) -> int:
        # The first token is never a label (nothing predicts it), so it never counts.
        return int(sum(self.mask[1:]))

    def truncated(self, max_len: int | None) -> "TrainSequence":
        return truncate(self, max_len)


def truncate(seq: TrainSequence, max_len: int | None) -> TrainSequence:
    """Keep the first ``max_len`` tokens (no-op for ``None``/0 or short sequences)."""
    if not max_len or len(seq) <= max_len:
        return seq
    meta = dict(seq.meta, truncated_from=len(seq))
    return TrainSequence(seq.ids[:max_len], seq.mask[:max_len], meta)


def end_token_id(tokenizer) -> int:
    """``<|im_end|>`` if the vocabulary has it, else eos (see module docstring)."""
    vocab = tokenizer.get_vocab()
    if IM_END in vocab:
        return int(vocab[IM_END])
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither <|im_end|> nor an eos token: cannot mark the end of a response")
    return int(tokenizer.eos_token_id)


def _ends_with_answer(text: str) -> bool:
    return text.rstrip().endswith(protocol.ANSWER_STOP_STRING)


def from_trajectory(traj, max_len: int | None = None, end_id: int | None = None) -> TrainSequence:
    """``prompt_ids + response_ids`` with mask ``[0]*P + response_mask``.

    ``end_id``: append this trained end token when the response ends with its answer
    (and does not already end with it).
    """
    if len(traj.response_ids) != len(traj.response_mask):
        raise ValueError(
            f"trajectory {traj.id}: {len(traj.response_ids)} response_ids but {len(traj.response_mask)} mask values"
        )
    if not traj.prompt_ids:
        raise ValueError(f"trajectory {traj.id}: empty prompt_ids (rollouts must record the prompt)")
    ids = list(traj.prompt_ids) + list(traj.response_ids)
    mask = [0] * len(traj.prompt_ids) + list(traj.response_mask)
    if end_id is not None and _ends_with_answer(traj.response_text) and (not ids or ids[-1] != end_id):
        ids.append(int(end_id))
        mask.append(1)
    meta = {"id": traj.id, "example_id": traj.example_id, "prompt_len": len(traj.prompt_ids)}
    return truncate(TrainSequence(ids, mask, meta), max_len)


def from_text(
    tokenizer,
    prompt_ids: Sequence[int],
    response_text: str,
    *,
    grammar: protocol.Grammar,
    max_len: int | None = None,
    add_end: bool = True,
    meta: dict[str, Any] | None = None,
) -> TrainSequence:
    """Encode ``response_text`` after ``prompt_ids`` with ``grammar`` (result blocks masked, end token appended)."""
    resp_ids, resp_mask = grammar.encode_response(tokenizer, response_text)
    if add_end and _ends_with_answer(response_text):
        resp_ids.append(end_token_id(tokenizer))
        resp_mask.append(1)
    ids = list(prompt_ids) + resp_ids
    mask = [0] * len(prompt_ids) + resp_mask
    info = {"prompt_len": len(prompt_ids), **(meta or {})}
    return truncate(TrainSequence(ids, mask, info), max_len)
