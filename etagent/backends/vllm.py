"""Offline vLLM engine backend (``backend=vllm``; needs ``pip install vllm`` and a GPU).

``vllm`` is imported lazily, on the first ``generate``/``sync_weights``, so etagent imports
and tests run without it. Prompts go in as token ids (``{"prompt_token_ids": ids}``, the
``TokensPrompt`` TypedDict) and the sampled ``token_ids`` come back untouched.

Translation of :class:`SamplingParams`: ``stop`` -> ``stop`` with
``include_stop_str_in_output=True`` (the closer stays in the response, as the protocol
needs), ``logprobs=1`` (the sampled token's log-prob is always among those returned),
``n``, ``seed``, ``max_new_tokens`` -> ``max_tokens``, ``skip_special_tokens=False``,
``top_k`` (0 -> vLLM's -1, off) and ``repetition_penalty``.
``finish_reason``: vLLM's ``stop`` with a string ``stop_reason`` -> ``stop``; with an
integer or ``None`` stop reason (eos / stop token) -> ``eos`` and the trailing eos id is
dropped (backend contract); ``length`` -> ``length``.

Log-probs: vLLM reports them under its ``logprobs_mode`` (default ``raw_logprobs``: the
model's distribution *before* temperature); etagent's ``hf`` backend reports the
temperature-scaled one. Pass ``llm_kwargs={"logprobs_mode": "processed_logprobs"}`` on
vLLM >= 0.10.2 to get post-temperature values; the RL trainer recomputes old log-probs
either way, so this only matters for diagnostics.

Weight sync (:meth:`VLLMBackend.sync_weights`): a path/str reloads the engine from that
checkpoint (always works, slow); a torch module has its ``named_parameters`` streamed into
the running engine with ``llm.apply_model(lambda m: m.load_weights(...))`` (vLLM >= 0.9,
in-process engine: set ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) or, on the V0 engine,
``llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights``.
"""

from __future__ import annotations

import importlib
from typing import Any

from etagent.backends.base import EOS, LENGTH, STOP, Completion, GenerationBackend, SamplingParams, response_stop_ids


def _import_vllm():
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("backend=vllm needs the vllm package (pip install vllm, GPU machine)") from exc


class VLLMBackend(GenerationBackend):
    kind = "vllm"

    def __init__(self, model: str | None = None, tokenizer: Any = None, gpu_memory_utilization: float = 0.5,
                 tensor_parallel_size: int = 1, max_model_len: int | None = None, dtype: str = "auto", seed: int = 0,
                 enforce_eager: bool = False, enable_prefix_caching: bool = True, llm_kwargs: dict | None = None):
        self.model_path = model
        self.tokenizer = tokenizer
        self.engine_kwargs = dict(gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
                                  max_model_len=max_model_len, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
                                  enable_prefix_caching=enable_prefix_caching, **dict(llm_kwargs or {}))
        self._llm = None
        self._eos: set[int] | None = None

    # ------------------------------------------------------------------ engine
    @property
    def llm(self):
        if self._llm is None:
            if not self.model_path:
                raise ValueError("backend=vllm needs a model path (backend.model or the policy checkpoint dir)")
            vllm = _import_vllm()
            kwargs = {k: v for k, v in self.engine_kwargs.items() if v is not None}
            self._llm = vllm.LLM(model=str(self.model_path), **kwargs)
            if self.tokenizer is None:
                self.tokenizer = self._llm.get_tokenizer()
        return self._llm

    def _eos_ids(self) -> set[int]:
        if self._eos is None:
            self._eos = set(response_stop_ids(self.tokenizer))
        return self._eos

    def _sampling_params(self, params: SamplingParams):
        vllm = _import_vllm()
        return vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop),
            include_stop_str_in_output=True,
            logprobs=1 if params.logprobs else None,
            seed=params.seed,
            skip_special_tokens=False,
            top_k=params.top_k if params.top_k > 0 else -1,  # vLLM: -1 = off
            repetition_penalty=params.repetition_penalty,
        )

    # ------------------------------------------------------------------ contract
    def generate(self, prefixes: list[list[int]], params: SamplingParams,
                 states: list[Any] | None = None) -> list[list[Completion]]:
        # ``states`` ignored (vLLM's own prefix caching (``enable_prefix_caching``) reuses the KV); Completion.state stays None
        llm = self.llm
        prompts = [{"prompt_token_ids": list(p)} for p in prefixes]
        outputs = llm.generate(prompts, self._sampling_params(params), use_tqdm=False)
        if len(outputs) != len(prefixes):
            raise RuntimeError(f"vllm returned {len(outputs)} outputs for {len(prefixes)} prompts")
        return [[self._completion(c, params) for c in out.outputs] for out in outputs]

    def _completion(self, c: Any, params: SamplingParams) -> Completion:
        ids = list(c.token_ids)
        lps: list[float] | None = None
        if params.logprobs and c.logprobs is not None:
            lps = [float(step[tid].logprob) if tid in step else float("nan") for tid, step in zip(ids, c.logprobs)]
        stop_reason = getattr(c, "stop_reason", None)
        if c.finish_reason == "length":
            finish, stop = LENGTH, None
        elif isinstance(stop_reason, str):
            finish, stop = STOP, stop_reason
        else:  # eos or a stop token id
            finish, stop = EOS, None
            if ids and ids[-1] in self._eos_ids() | ({stop_reason} if isinstance(stop_reason, int) else set()):
                ids = ids[:-1]
                lps = lps[:-1] if lps is not None else None
        if lps is not None and len(lps) != len(ids):
            lps = None
        return Completion(ids, lps, finish, stop)

    def sync_weights(self, model: Any) -> None:
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            self.close()
            self.model_path = str(model)
            return  # rebuilt lazily from the new checkpoint
        weights = [(name, p.detach()) for name, p in model.named_parameters()]
        llm = self.llm
        if hasattr(llm, "apply_model"):
            llm.apply_model(lambda m: m.load_weights(weights=weights))
            return
        try:
            runner_model = llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError as exc:
            raise RuntimeError(
                "vllm: cannot reach the engine's model to load weights; save the checkpoint and call "
                "sync_weights(path) instead (reloads the engine)"
            ) from exc
        runner_model.load_weights(weights)

    def close(self) -> None:
        self._llm = None
