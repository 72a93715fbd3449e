"""In-process transformers backend: a hand-written batched sampling loop with a KV cache.

Why not ``model.generate(stop_strings=...)``: measured on the 2.4M Qwen2, batch 64, CPU
(loaded 2-core box): fixed-length sampling runs at about the same speed (4.3k vs 4.2k tok/s)
but with stop strings ``generate`` keeps every row until the longest one ends, while here
finished rows *leave the batch* (their KV-cache rows are dropped once a quarter of the
slots are dead; compacting copies the cache, so not on every finish), and we get the
per-token log-probs and entropies without materialising ``output_scores``.

* Left padding, explicit ``position_ids`` (cumsum of the attention mask), one prefill,
  a pre-allocated (static) KV cache by default.
* Stop strings are matched on *text* per row (a model may spell ``</python>`` with several
  tokens even when the tokenizer has it as one); to keep it cheap, only rows whose new
  token can end a stop string (pre-computed per vocabulary id) decode a short tail window.
* eos / ``<|im_end|>`` end a row with ``finish_reason="eos"``; the eos id is not returned.
* ``logprobs[i]`` = log softmax(logits / T)[id] before top-p (T=1 when greedy);
  ``entropies[i]`` = entropy of that same distribution (used by entropy branching).
* Seeded: a ``torch.Generator`` seeded with ``params.seed`` drives all sampling of a call.
* ``sync_weights(model)`` just re-points at the (shared) module: the trainer updates the
  same parameters in place, so the next ``generate`` sees them; generation always runs in
  eval mode and restores the module's previous train/eval mode afterwards.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from etagent.backends.base import (EOS, LENGTH, STOP, Completion, GenerationBackend, SamplingParams, response_stop_ids,
                                   find_stop)


def _select_rows(cache, idx: torch.Tensor) -> None:
    """Keep only batch rows ``idx`` of a Dynamic or Static KV cache (finished rows leave)."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or not getattr(layer, "is_initialized", True):
            continue
        layer.keys = layer.keys.index_select(0, idx)
        layer.values = layer.values.index_select(0, idx)
        if hasattr(layer, "batch_size"):
            layer.batch_size = int(idx.numel())


class HFBackend(GenerationBackend):
    """Batched sampling from a transformers causal LM (shares the module with the trainer).

    ``dtype``: ``auto`` keeps the module's dtype; ``bfloat16``/``float16`` run the forward
    under autocast (the weights are the trainer's and stay untouched). ``device``: ``auto``
    uses the module's device; anything else moves the module there once. ``cache_impl``:
    ``static`` (pre-allocated KV cache, 1.6x faster decoding on CPU than ``dynamic`` which
    re-concatenates the cache every step; measured on the tiny model) or ``dynamic``.
    """

    def __init__(self, model: Any = None, tokenizer: Any = None, batch_size: int = 64, dtype: str = "auto",
                 device: str = "auto", cache_impl: str = "static", eos_token_ids: list[int] | None = None):
        if batch_size < 1:
            raise ValueError(f"backend.batch_size must be >= 1, got {batch_size}")
        if cache_impl not in ("static", "dynamic"):
            raise ValueError(f"backend.cache_impl must be 'static' or 'dynamic', got {cache_impl!r}")
        self.batch_size = int(batch_size)
        self.cache_impl = cache_impl
        self.dtype = dtype
        self.device_name = device
        self.tokenizer = tokenizer
        self.model = None
        self._eos_override = eos_token_ids
        self._stop_cache: dict[tuple[str, ...], tuple[torch.Tensor, int]] = {}
        self.stats = {"forward_s": 0.0, "steps": 0, "tokens": 0}
        if model is not None:
            self.sync_weights(model)
        if tokenizer is not None:
            self.eos_ids = self._resolve_eos_ids()

    # ------------------------------------------------------------------ setup
    def sync_weights(self, model: Any) -> None:
        if self.device_name not in (None, "auto"):
            model.to(torch.device(self.device_name))
        self.model = model

    def _resolve_eos_ids(self) -> list[int]:
        return list(self._eos_override) if self._eos_override is not None else response_stop_ids(self.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self):
        if self.dtype in (None, "auto", "float32", "fp32"):
            return contextlib.nullcontext()
        from etagent.models.factory import resolve_dtype

        return torch.autocast(device_type=self.device.type, dtype=resolve_dtype(self.dtype))

    def _stop_table(self, stops: tuple[str, ...]) -> tuple[torch.Tensor, int]:
        """Per vocab id: can this token end one of ``stops``? And the tail window (tokens) to decode."""
        if stops not in self._stop_cache:
            vocab = max(len(self.tokenizer), self.model.get_output_embeddings().weight.shape[0])
            last_chars = {s[-1] for s in stops if s}
            flags = torch.zeros(vocab, dtype=torch.bool)
            if last_chars:
                pieces = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))], skip_special_tokens=False)
                for i, p in enumerate(pieces):
                    if any(c in p for c in last_chars):
                        flags[i] = True
            window = max((len(s.encode("utf-8")) for s in stops if s), default=0) + 1
            self._stop_cache[stops] = (flags.to(self.device), window)
        return self._stop_cache[stops]

    def _new_cache(self, max_len: int):
        from transformers import DynamicCache, StaticCache

        if self.cache_impl == "static":
            return StaticCache(config=self.model.config, max_cache_len=max_len)
        return DynamicCache(config=self.model.config)

    # ------------------------------------------------------------------ generation
    def generate(self, prefixes: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if self.model is None or self.tokenizer is None:
            raise RuntimeError("HFBackend needs a model and a tokenizer (sync_weights(model) / tokenizer=...)")
        if not hasattr(self, "eos_ids"):  # tokenizer set after construction
            self.eos_ids = self._resolve_eos_ids()
        for i, p in enumerate(prefixes):
            if not p:
                raise ValueError(f"HFBackend.generate: prefix {i} is empty")
        rows = [(i, j) for i in range(len(prefixes)) for j in range(params.n)]
        # sort by length so a chunk pads little; results are put back in order below
        order = sorted(range(len(rows)), key=lambda r: len(prefixes[rows[r][0]]))
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(int(params.seed))
        out: list[list[Completion | None]] = [[None] * params.n for _ in prefixes]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), self._autocast():
                for c in range(0, len(order), self.batch_size):
                    chunk = order[c : c + self.batch_size]
                    comps = self._generate_chunk([prefixes[rows[r][0]] for r in chunk], params, gen)
                    for r, comp in zip(chunk, comps):
                        i, j = rows[r]
                        out[i][j] = comp
        finally:
            if was_training:
                self.model.train()
        return out  # type: ignore[return-value]

    def _sample(self, logits: torch.Tensor, params: SamplingParams, gen) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = logits.float()
        temp = params.temperature if params.temperature > 0 else 1.0
        logp = torch.log_softmax(logits / temp, dim=-1)
        probs = logp.exp()
        entropy = -(probs * logp).sum(-1)
        if params.temperature == 0:
            tok = probs.argmax(-1)
        else:
            p = probs
            if params.top_p < 1.0:
                sp, si = p.sort(dim=-1, descending=True)
                drop = sp.cumsum(-1) - sp > params.top_p  # keep the smallest set reaching top_p
                sp = sp.masked_fill(drop, 0.0)
                p = torch.zeros_like(p).scatter_(-1, si, sp)
            tok = torch.multinomial(p, 1, generator=gen).squeeze(-1)
        return tok, logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1), entropy

    def _generate_chunk(self, prefixes: list[list[int]], params: SamplingParams, gen) -> list[Completion]:
        dev = self.device
        B = len(prefixes)
        L = max(len(p) for p in prefixes)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((B, L), pad, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, p in enumerate(prefixes):
            ids[b, L - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[b, L - len(p) :] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        eos = torch.tensor(self.eos_ids or [-1], device=dev)
        stops = tuple(s for s in params.stop if s)
        may_stop, window = self._stop_table(stops) if stops else (None, 0)

        cache = self._new_cache(L + params.max_new_tokens)
        t0 = time.perf_counter()
        logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True,
                            logits_to_keep=1).logits[:, -1, :]
        next_pos = pos[:, -1] + 1
        slots: list[int | None] = list(range(B))  # batch slot -> row (None: finished, awaiting compaction)
        toks: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        ents: list[list[float]] = [[] for _ in range(B)]
        result: list[Completion | None] = [None] * B
        for step in range(params.max_new_tokens):
            tok, lp, ent = self._sample(logits, params, gen)
            is_eos = torch.isin(tok, eos)
            cand = may_stop[tok] & ~is_eos if may_stop is not None else None
            tok_l, lp_l, ent_l, eos_l = tok.tolist(), lp.tolist(), ent.tolist(), is_eos.tolist()
            cand_l = cand.tolist() if cand is not None else [False] * len(slots)
            last = step == params.max_new_tokens - 1
            for slot, row in enumerate(slots):
                if row is None:
                    continue
                if eos_l[slot]:
                    result[row], slots[slot] = Completion(toks[row], lps[row], EOS, None, ents[row]), None
                    continue
                toks[row].append(tok_l[slot])
                lps[row].append(lp_l[slot])
                ents[row].append(ent_l[slot])
                if cand_l[slot]:
                    tail = self.tokenizer.decode(toks[row][-window:], skip_special_tokens=False)
                    hit = find_stop(tail, stops)
                    if hit is not None:
                        result[row], slots[slot] = Completion(toks[row], lps[row], STOP, hit[1], ents[row]), None
                        continue
                if last:
                    result[row], slots[slot] = Completion(toks[row], lps[row], LENGTH, None, ents[row]), None
            live = [s for s, r in enumerate(slots) if r is not None]
            if not live:
                break
            # Finished rows leave the batch (and the KV cache). Compacting copies the whole
            # cache, so it is done once a quarter of the slots are dead, not on every finish.
            if (len(slots) - len(live)) * 4 >= len(slots):
                k = torch.tensor(live, device=dev)
                _select_rows(cache, k)
                attn, next_pos, tok = attn[k], next_pos[k], tok[k]
                slots = [slots[s] for s in live]
            attn = torch.cat([attn, attn.new_ones((len(slots), 1))], dim=1)
            logits = self.model(input_ids=tok.unsqueeze(1), attention_mask=attn, position_ids=next_pos.unsqueeze(1),
                                cache=cache, use_cache=True).logits[:, -1, :]
            next_pos = next_pos + 1
            self.stats["steps"] += 1
        self.stats["forward_s"] += time.perf_counter() - t0
        self.stats["tokens"] += sum(len(t) for t in toks)
        out = list(result)
        if not params.logprobs:
            for r in out:
                r.logprobs = None  # type: ignore[union-attr]
        return out  # type: ignore[return-value]
