"""Per-token log-probabilities of sampled responses under a causal LM, on model tokens only.

A trajectory is ``prompt_ids + response_ids``; ``response_mask`` marks the ids the model
sampled (1) versus ids the environment injected (0: ``<result>`` blocks). Everything the
RL loss needs is laid out on the *target* axis of the shifted logits: position ``t`` of a
``[B, L-1]`` tensor scores ``input_ids[:, t+1]`` from ``logits[:, t]``.

Choices (explicit because they change the numbers):

* Right padding with an attention mask: padding sits after every real token, so causal
  attention never sees it and no position ids are needed.
* ``temperature`` divides the logits before ``log_softmax`` (as verl does), so the
  trainer's log-probs describe the distribution the sampler drew from (top-p truncation
  is ignored, as usual). Every log-prob the trainer compares (old, new, reference) goes
  through the same function with the same temperature.
* Log-softmax and entropy run in float32 on the masked rows only, so bf16 autocast
  never rounds a log-prob and the vocabulary-sized tensor is only built where needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class PackedBatch:
    """Sequences packed for one forward pass.

    ``loss_mask[b, t]`` is 1 iff ``input_ids[b, t+1]`` is a model-sampled response token;
    ``response_start[b]`` is the prompt length (index of the first response id).
    """

    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    loss_mask: torch.Tensor  # [B, L-1] float
    response_start: list[int]
    response_len: list[int]

    def to(self, device: torch.device | str) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device),
                           self.response_start, self.response_len)

    def select(self, rows: Sequence[int], trim: bool = False) -> "PackedBatch":
        """Sub-batch of ``rows``; ``trim`` cuts it to its own longest sequence.

        The trainer does not trim: equal shapes keep recomputed log-probs bitwise equal
        across passes (ratio exactly 1 on-policy, KL exactly 0 at the reference), which a
        different padded length breaks by a few ulps.
        """
        rows = [int(r) for r in rows]
        L = self.input_ids.shape[1]
        if trim:
            L = max(2, max(self.response_start[r] + self.response_len[r] for r in rows))
        ix = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        return PackedBatch(self.input_ids[ix, :L], self.attention_mask[ix, :L], self.loss_mask[ix, : L - 1],
                           [self.response_start[r] for r in rows], [self.response_len[r] for r in rows])

    def scatter(self, per_token: Sequence[Sequence[float] | None], fill: float = 0.0) -> torch.Tensor:
        """Place per-response-token values (e.g. rollout log-probs) on the target axis: [B, L-1]."""
        out = torch.full(self.loss_mask.shape, fill, dtype=torch.float32)
        for b, vals in enumerate(per_token):
            if vals is None:
                continue
            n = self.response_len[b]
            if len(vals) != n:
                raise ValueError(f"sequence {b}: {len(vals)} values for {n} response ids")
            s = self.response_start[b] - 1
            out[b, s : s + n] = torch.as_tensor(list(vals), dtype=torch.float32)
        return out.to(self.loss_mask.device)

    def gather(self, values: torch.Tensor) -> list[list[float]]:
        """Inverse of :meth:`scatter`: per-response-token values of a [B, L-1] tensor."""
        out = []
        for b in range(values.shape[0]):
            s = self.response_start[b] - 1
            out.append(values[b, s : s + self.response_len[b]].tolist())
        return out


def pack(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    response_mask: Sequence[Sequence[int]],
    pad_id: int = 0,
) -> PackedBatch:
    """Right-pad ``prompt + response`` sequences and build the target-axis loss mask."""
    if not (len(prompt_ids) == len(response_ids) == len(response_mask)):
        raise ValueError("pack: prompt_ids, response_ids and response_mask must have the same length")
    if not prompt_ids:
        raise ValueError("pack: empty batch")
    lengths = []
    for b, (p, r, m) in enumerate(zip(prompt_ids, response_ids, response_mask)):
        if len(p) == 0:
            raise ValueError(f"pack: sequence {b} has an empty prompt (the first response id needs a context)")
        if len(r) != len(m):
            raise ValueError(f"pack: sequence {b} has {len(r)} response ids but {len(m)} mask values")
        lengths.append(len(p) + len(r))
    L = max(max(lengths), 2)
    B = len(prompt_ids)
    ids = torch.full((B, L), int(pad_id), dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    loss_mask = torch.zeros((B, L - 1), dtype=torch.float32)
    for b, (p, r, m) in enumerate(zip(prompt_ids, response_ids, response_mask)):
        seq = list(p) + list(r)
        ids[b, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attn[b, : len(seq)] = 1
        if r:
            loss_mask[b, len(p) - 1 : len(p) - 1 + len(r)] = torch.as_tensor([1.0 if x else 0.0 for x in m])
    return PackedBatch(ids, attn, loss_mask, [len(p) for p in prompt_ids], [len(r) for r in response_ids])


def pack_trajectories(trajectories, pad_id: int = 0) -> PackedBatch:
    return pack([t.prompt_ids for t in trajectories], [t.response_ids for t in trajectories],
                [t.response_mask for t in trajectories], pad_id)


def token_logprobs(
    model,
    batch: PackedBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, L-1]`` of the target ids (0 where ``loss_mask`` is 0) and optionally entropy.

    Gradients flow through the returned log-probs iff grad mode is on; entropy is
    always detached (a metric, not a loss term).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    device = batch.input_ids.device
    ctx = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else torch.autocast(device_type=device.type, enabled=False))
    with ctx:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logits = logits[:, :-1]
    targets = batch.input_ids[:, 1:]
    sel = batch.loss_mask > 0
    lp = torch.zeros(batch.loss_mask.shape, dtype=torch.float32, device=device)
    ent = torch.zeros_like(lp) if with_entropy else None
    if sel.any():
        rows = logits[sel].float() / temperature  # [N, V]; only model tokens
        logp = F.log_softmax(rows, dim=-1)
        lp = lp.masked_scatter(sel, logp.gather(-1, targets[sel].unsqueeze(-1)).squeeze(-1))
        if with_entropy:
            with torch.no_grad():
                ent = ent.masked_scatter(sel, -(logp.exp() * logp).sum(-1))
    return lp, ent


def sequence_logprobs(model, batch: PackedBatch, temperature: float = 1.0) -> torch.Tensor:
    """Sum of log-probs over each sequence's model tokens: ``[B]`` (tool results excluded)."""
    lp, _ = token_logprobs(model, batch, temperature)
    return (lp * batch.loss_mask).sum(-1)
