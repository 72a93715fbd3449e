"""OpenAI-compatible ``/v1/completions`` backend (a vLLM or SGLang server), async over httpx.

One request per prefix (``n`` samples each), all in flight at once under a semaphore of
``max_concurrency``; transport errors, timeouts, 429 and 5xx are retried ``max_retries``
times with exponential back-off (``backoff_s * 2**attempt``); other 4xx raise with the
server's message.

Token ids: the prompt is sent as a list of ids (vLLM accepts ``prompt: list[int]``;
``prompt_format="text"`` sends the decoded text for servers that do not). The completion's
ids come from the server when it returns them (vLLM ``return_token_ids=true`` ->
``choices[i].token_ids``); otherwise the text is re-tokenised with the local tokenizer,
which may differ from what the server sampled (BPE merges across the boundary, invalid
bytes): the drift the rest of etagent avoids, so prefer a server that returns ids (a
warning is logged once when it does not).

Stop strings are sent with ``include_stop_str_in_output`` (vLLM) and ``no_stop_trim``
(SGLang) so the closer stays in the output; if the server still trims it, the stop string
is appended (re-tokenised). ``top_k`` / ``repetition_penalty`` go as vLLM's extra request
fields when switched on. Log-probs: ``logprobs=1``; ``token_logprobs`` as the server
computes them (vLLM: before temperature by default). eos: a ``stop`` finish with no string
``stop_reason`` is ``eos`` (trailing eos id dropped).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
from typing import Any, Literal

from etagent.backends.base import (EOS, LENGTH, STOP, Completion, GenerationBackend, SamplingParams, response_stop_ids,
                                   find_stop)

log = logging.getLogger(__name__)
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIBackend(GenerationBackend):
    kind = "server"

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 model: str = "policy", tokenizer: Any = None, max_concurrency: int = 32, timeout_s: float = 120.0,
                 max_retries: int = 3, backoff_s: float = 0.5, prompt_format: Literal["ids", "text"] = "ids",
                 extra_body: dict | None = None):
        if prompt_format not in ("ids", "text"):
            raise ValueError(f"backend.prompt_format must be 'ids' or 'text', got {prompt_format!r}")
        if max_concurrency < 1:
            raise ValueError(f"backend.max_concurrency must be >= 1, got {max_concurrency}")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.model = model
        self.tokenizer = tokenizer
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.prompt_format = prompt_format
        self.extra_body = dict(extra_body or {})
        self._warned_drift = False
        self.stats = {"requests": 0, "retries": 0}

    # ------------------------------------------------------------------ contract
    def generate(self, prefixes: list[list[int]], params: SamplingParams,
                 states: list[Any] | None = None) -> list[list[Completion]]:
        # ``states`` ignored (a server keeps (or not) its own prefix cache); Completion.state stays None
        coro = self._generate_all(prefixes, params)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # called from inside an event loop (notebook): run ours on a helper thread
        box: dict[str, Any] = {}

        def runner() -> None:
            try:
                box["out"] = asyncio.run(coro)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["err"] = exc

        t = threading.Thread(target=runner)
        t.start()
        t.join()
        if "err" in box:
            raise box["err"]
        return box["out"]

    def sync_weights(self, model: Any) -> None:
        raise NotImplementedError(
            "backend=openai: the server owns the weights; serve the new checkpoint (or use backend=hf/vllm for RL)"
        )

    # ------------------------------------------------------------------ HTTP
    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, prefix: list[int], params: SamplingParams, index: int) -> dict[str, Any]:
        prompt: Any = list(prefix)
        if self.prompt_format == "text":
            if self.tokenizer is None:
                raise ValueError("backend=openai with prompt_format=text needs a tokenizer")
            prompt = self.tokenizer.decode(prefix, skip_special_tokens=False)
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "n": params.n, "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "stop": list(params.stop) or None,
            "include_stop_str_in_output": True, "no_stop_trim": True, "skip_special_tokens": False,
            "return_token_ids": True,
        }
        if params.logprobs:
            body["logprobs"] = 1
        # vLLM's OpenAI-compatible server takes these as extra request fields (the released scripts'
        # extra_body); sent only when switched on, so a server without them never sees the keys
        if params.top_k > 0:
            body["top_k"] = int(params.top_k)
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = float(params.repetition_penalty)
        if params.seed is not None:
            body["seed"] = int(params.seed) + index  # distinct but reproducible per prompt
        body.update(self.extra_body)
        return body

    async def _generate_all(self, prefixes: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        import httpx

        sem = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s, limits=limits,
                                     headers=self._headers()) as client:
            async def one(i: int, prefix: list[int]) -> list[Completion]:
                async with sem:
                    data = await self._post(client, self._body(prefix, params, i))
                choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
                if len(choices) != params.n:
                    raise RuntimeError(f"openai backend: got {len(choices)} choices for n={params.n} (prompt {i})")
                return [self._completion(c, params) for c in choices]

            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prefixes))))

    async def _post(self, client, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * (1 + 0.1 * random.random()))
            self.stats["requests"] += 1
            try:
                resp = await client.post("/completions", json=body)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = exc
                continue
            if resp.status_code in _RETRY_STATUS:
                last = RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
                continue
            if resp.status_code >= 400:
                raise RuntimeError(f"openai backend: {self.base_url}/completions -> HTTP {resp.status_code}: {resp.text[:500]}")
            return resp.json()
        raise RuntimeError(f"openai backend: {self.base_url}/completions failed after {self.max_retries + 1} attempts: {last}")

    # ------------------------------------------------------------------ parsing
    def _eos_ids(self) -> set[int]:
        return set(response_stop_ids(self.tokenizer))

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("openai backend: the server returned no token_ids and no tokenizer is configured")
        if not self._warned_drift:
            log.warning("openai backend: server returned no token ids; re-tokenising text (ids may drift)")
            self._warned_drift = True
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _completion(self, choice: dict[str, Any], params: SamplingParams) -> Completion:
        text = choice.get("text") or ""
        ids = choice.get("token_ids")
        server_ids = ids is not None
        ids = list(ids) if server_ids else None
        lp_block = choice.get("logprobs") or {}
        lps = lp_block.get("token_logprobs") if isinstance(lp_block, dict) else None
        reason = choice.get("finish_reason")
        stop_reason = choice.get("stop_reason")
        stops = tuple(s for s in params.stop if s)
        if reason == "length":
            finish, stop = LENGTH, None
        elif isinstance(stop_reason, str) and stop_reason in stops:
            finish, stop = STOP, stop_reason
        elif stop_reason is None and reason == "stop" and stops:
            hit = find_stop(text, stops)  # server did not say which: look for a closer at the end
            finish, stop = (STOP, hit[1]) if hit is not None and not text[hit[0]:].strip() else (EOS, None)
        else:
            finish, stop = EOS, None
        if ids is None:
            ids = self._encode(text)
        if finish == STOP and stop is not None and stop not in text:  # server trimmed the closer
            extra = self._encode(stop)
            ids = ids + extra
            lps = (list(lps) + [0.0] * len(extra)) if lps is not None else None
        if finish == EOS and ids and ids[-1] in self._eos_ids():
            ids = ids[:-1]
            lps = lps[: len(ids)] if lps is not None else None
        if lps is not None:
            lps = [float(x) if x is not None else 0.0 for x in lps]
            if len(lps) != len(ids):
                lps = None  # re-tokenised ids: log-probs no longer line up
        if not params.logprobs:
            lps = None
        return Completion(ids, lps, finish, stop)
