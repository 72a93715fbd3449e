"""The generation-backend contract: token-id prefixes in, sampled token ids + log-probs out.

Every backend (``hf`` in-process torch, ``vllm`` offline engine, ``openai`` HTTP server)
implements :meth:`GenerationBackend.generate` on *token ids*, never on text, so the rollout
engine can keep the exact sampled ids end to end (no decode/re-encode drift, cf. verl
issues #3720/#3960).

Log-probs: ``Completion.logprobs[i]`` is the log-probability of ``ids[i]`` under the
temperature-scaled distribution ``softmax(logits / T)`` *before* top-p truncation (T=1 for
greedy). That is the distribution the trainer recomputes for its importance ratio; a
server may report a different convention (see each backend's docstring). ``top_k`` and
``repetition_penalty`` (off by default) follow vLLM: the penalty divides a positive logit
(multiplies a negative one) of every id already in the prompt or the sampled ids; ``hf``
reports log-probs after the penalty (the distribution sampled from).

Continuation states (KV reuse across tool turns): ``generate(prefixes, params, states)``.
``states=None`` means the caller will not continue these sequences. A list (one entry per
prefix, entries may be None) asks the backend to continue from what it kept for the
previous call and to return, in ``Completion.state``, an opaque handle for the next one.
A handle is only a hint: a backend must check it still matches the prefix (the prefix starts
with the sequence the state was made for; same weights) and otherwise prefill in full, so
passing a stale or foreign state changes speed, never the output. Backends that cannot
reuse (``vllm`` has its own prefix caching; ``openai`` is a server) ignore ``states`` and
return ``state=None``. ``hf`` keeps the states of one call until the next call (see
:mod:`etagent.backends.hf`). States are run-time handles, never serialised.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

STOP, LENGTH, EOS = "stop", "length", "eos"
FINISH_REASONS = (STOP, LENGTH, EOS)
#: what a backend does with a policy (``GenerationBackend.kind``): ``hf`` runs the trainer's own
#: in-process module, ``vllm`` loads (and reloads) a checkpoint directory, ``server`` serves weights
#: that never follow a trainer (openai-compatible HTTP)
BACKEND_KINDS = ("hf", "vllm", "server")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    # the rollout engine adds its grammar's stop strings (call closers, ``</answer>``) to these
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = True
    # released evaluation / flywheel sampling (vLLM semantics): top_k 20, repetition_penalty 1.1;
    # 0 and 1.0 switch them off (the defaults, so every sampler without them is unchanged)
    top_k: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"SamplingParams.repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}")
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.stop = tuple(self.stop or ())

    def replace(self, **changes: Any) -> "SamplingParams":
        return replace(self, **changes)


@dataclass
class Completion:
    ids: list[int]  # sampled ids INCLUDING the stop-string tokens, excluding pad/eos
    logprobs: list[float] | None  # one per id (see module docstring for the distribution)
    finish_reason: str  # "stop" (hit a stop string) | "length" | "eos"
    stop: str | None = None  # which stop string (finish_reason == "stop")
    # Optional per-token entropy of the sampling distribution (hf only); used by entropy branching.
    entropies: list[float] | None = field(default=None, repr=False)
    # Opaque continuation handle for the next ``generate`` call (module docstring); None if none.
    state: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Completion.finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")
        if self.logprobs is not None and len(self.logprobs) != len(self.ids):
            raise ValueError(f"Completion: {len(self.logprobs)} logprobs for {len(self.ids)} ids")


class GenerationBackend(ABC):
    """Samples continuations of token-id prefixes. ``tokenizer`` is the policy's tokenizer.

    ``kind`` (one of :data:`BACKEND_KINDS`) is a class attribute, so the run environment knows
    how to hand a backend its policy from the configured ``_target_`` without building it."""

    kind: ClassVar[str] = "server"
    tokenizer: Any = None

    @abstractmethod
    def generate(self, prefixes: list[list[int]], params: SamplingParams,
                 states: list[Any] | None = None) -> list[list[Completion]]:
        """``[len(prefixes)][params.n]`` completions, in prefix order.

        ``states``: None, or one continuation state (or None) per prefix, taken from the
        ``Completion.state`` of the previous call (module docstring)."""

    def sync_weights(self, model: Any) -> None:  # pragma: no cover - backends override
        """Make the next ``generate`` use ``model``'s current weights (after a training step)."""
        raise NotImplementedError(f"{type(self).__name__} cannot sync weights")

    def close(self) -> None:
        """Release engines, pools or HTTP clients."""


def find_stop(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """Earliest (end position, stop string) of any stop string in ``text``, or None."""
    best: tuple[int, str] | None = None
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best[0]):
            best = (i + len(s), s)
    return best


def response_stop_ids(tokenizer: Any) -> list[int]:
    """Ids that end a response on their own: eos and ChatML ``<|im_end|>`` (none without a tokenizer)."""
    if tokenizer is None:
        return []
    try:
        from etagent.models.tokenizer import stop_token_ids  # lazy: pulls in transformers

        return stop_token_ids(tokenizer)
    except Exception:  # noqa: BLE001 - any tokenizer without the ChatML tokens
        eos = getattr(tokenizer, "eos_token_id", None)
        return [eos] if eos is not None else []
