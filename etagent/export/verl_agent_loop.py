"""verl agent loop ``etagent_tir``: ET-Agent's inline tag protocol inside verl's rollout.

Registered under ``etagent_tir`` by the shipped registry file (:data:`AGENT_LOOPS_YAML`,
``etagent/export/verl_agent_loops.yaml``): pass it as
``actor_rollout_ref.rollout.agent.agent_loop_config_path`` and select the loop with
``actor_rollout_ref.rollout.agent.default_agent_loop=etagent_tir`` (the parquet has no
``agent_name`` column). Needs ``pip install 'etagent[verl]'`` (verl 0.9.1).

Per sample (verl instantiates one loop per rollout, all in one event loop per worker):

1. prompt ids: verl's own Continuous-Token builder renders ``raw_prompt`` (system + user,
   as :mod:`etagent.export.verl` wrote it) with the model's chat template;
2. one turn: ``server_manager.generate`` with the stop strings of the configured tools' grammar
   (``Grammar.stop_strings``: every tool's call closer and ``</answer>``, kept in the output)
   and a token cap of
   ``min(rollout.max_turn_tokens, tokens left)``;
3. the turn is handed to :class:`etagent.rollout.engine.RolloutEngine`'s own per-row rules
   (``_on_completion``: answer / eos / length / call parsing / call budget; ``_run_tools``:
   one ``ToolSet.execute`` call, result wrapped by ``Grammar.format_result``
   and appended as ids with mask 0). The loop re-implements none of them, so a verl
   rollout and an etagent rollout of the same policy are the same sequence
   (``tests/test_verl_agent_loop.py`` checks ids and mask under greedy decoding);
4. repeat until the row finishes; return :class:`AgentLoopOutput` (prompt/response ids,
   ``response_mask``, log-probs when requested, ``num_turns``, timing metrics) with
   ``extra_fields`` that verl's reward loop passes to the reward as ``extra_info``:
   ``model_tokens`` (exact: tokens with mask 1, the length :mod:`etagent.export.verl_reward`
   prefers), ``n_executed`` (calls that ran: ``Trajectory.n_executed``'s rule), ``tool_s``,
   ``finish_reason``.

Settings come from etagent's Hydra config (``conf/config.yaml``) composed with the
``overrides`` of the registry entry (verl builds the loop, so there is no run to hand it one):
its run environment (:class:`etagent.runenv.RunEnv`) is built from that config, explicitly:
the tool set is ``build_toolset(cfg.tools)`` and the grammar is that tool set's (built once per
process and shared by every loop there), the grader is the config's; the rules are
``cfg.rollout`` (``budget``,
``max_calls_total`` / ``max_calls_per_kind``, ``max_turn_tokens``, ``max_result_chars``,
``budget_grace``). verl's ``rollout.response_length`` is the response budget.

Departures from etagent's own rollout: an eos / ``<|im_end|>`` that ends the response is
kept as the last response id with mask 1 (verl's convention: vLLM returns it and the
policy learns to stop; etagent's backends drop it); a response longer than
``response_length`` (a final tool result may overshoot by one block) is cut to it, as
verl's own loops do; entropy branching (``rollout=branching``) is not available.
"""

from __future__ import annotations

import atexit
import threading
import time
from importlib import resources
from typing import Any, Sequence

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register

from etagent import protocol
from etagent.backends.base import EOS, LENGTH, STOP, Completion, find_stop, response_stop_ids
from etagent.config.compose import compose_etagent
from etagent.records import EXECUTED_STATUSES

AGENT_NAME = "etagent_tir"
#: The registry file to pass as ``actor_rollout_ref.rollout.agent.agent_loop_config_path``.
AGENT_LOOPS_YAML = str(resources.files("etagent.export").joinpath("verl_agent_loops.yaml"))

_ENVS: dict[tuple[str, ...], Any] = {}
_LOCK = threading.Lock()

__all__ = ["AGENT_NAME", "AGENT_LOOPS_YAML", "ETAgentTIRLoop", "compose_etagent", "shared_setup"]


def shared_setup(overrides: tuple[str, ...]) -> Any:
    """The :class:`etagent.runenv.RunEnv` of etagent's config composed with ``overrides``, its tool
    set built: once per process and overrides (verl makes one loop per sample, and sandbox pools
    or a Hydra compose per sample would dominate)."""
    from etagent.runenv import RunEnv

    with _LOCK:
        if overrides not in _ENVS:
            env = RunEnv.from_config(compose_etagent(overrides))
            env.toolset  # noqa: B018 - build it now, under the lock (its grammar is checked against the config's)
            atexit.register(env.close)
            _ENVS[overrides] = env
        return _ENVS[overrides]


class _TokenizerHolder:
    """What RolloutEngine needs of a backend here: its tokenizer (generation goes through verl)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def generate(self, prefixes, params):  # pragma: no cover - never called
        raise RuntimeError("etagent_tir generates through verl's server manager")


@register(AGENT_NAME)
class ETAgentTIRLoop(AgentLoopBase):
    """The ``etagent_tir`` agent loop (see the module docstring)."""

    def __init__(self, *args: Any, overrides: Sequence[str] = (), **kwargs: Any):
        kwargs.pop("name", None)  # the registry entry's own name reaches the constructor
        super().__init__(*args, **kwargs)
        from hydra.utils import instantiate

        from etagent.rollout.engine import RolloutEngine

        self.overrides = tuple(str(o) for o in (overrides or ()))
        env = shared_setup(self.overrides)
        cfg, self.toolset = env.cfg, env.toolset
        if str(cfg.rollout.get("strategy", "standard")) != "standard":
            raise ValueError("etagent_tir: rollout.strategy must be standard (verl samples each rollout on its own)")
        self.response_length = int(self.rollout_config.response_length)
        # the prompt comes from the parquet (verl renders raw_prompt); the grader is unused here
        # (verl's reward scores), labels are off
        self.engine: RolloutEngine = instantiate(
            cfg.rollout, backend=_TokenizerHolder(self.tokenizer), toolset=self.toolset,
            grader=env.grader, grammar=self.toolset.grammar, system_prompt=None,
            max_response_tokens=self.response_length, label_behaviour=False, progress_min_rows=0,
        )
        self.stop_strings = self.engine.grammar.stop_strings
        self.engine._cur_budget = self.engine._budget(0)
        self.stop_ids = set(response_stop_ids(self.tokenizer))
        # keep the stop string in the output: vLLM and SGLang spell it differently
        name = str(self.rollout_config.get("name", "vllm"))
        self.keep_stop = {"sglang": {"no_stop_trim": True}}.get(name, {"include_stop_str_in_output": True})

    def _completion(self, ids: list[int], logprobs: list[float] | None, max_new: int) -> tuple[Completion, int | None]:
        """A server turn as etagent's Completion (+ the eos id it ended with, if any)."""
        eos = None
        if ids and ids[-1] in self.stop_ids:
            eos = ids[-1]
            return Completion(ids[:-1], logprobs[:-1] if logprobs else None, EOS), eos
        hit = find_stop(self.tokenizer.decode(ids, skip_special_tokens=False), self.stop_strings)
        if hit is not None:
            return Completion(ids, logprobs, STOP, hit[1]), None
        # no stop string: the turn cap (LENGTH) -- or a server that stopped otherwise (STOP, None)
        return Completion(ids, logprobs, LENGTH if len(ids) >= max_new else STOP), None

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        from uuid import uuid4

        from etagent.rollout.engine import _Row

        messages = list(kwargs["raw_prompt"])
        prompt_ids = await self.ct_build_initial_tokens(messages)
        eng = self.engine
        row = _Row(ex=0, prompt_ids=list(prompt_ids), t0=time.perf_counter())
        want_lp = bool(sampling_params.get("logprobs"))
        eos_id: int | None = None
        eos_lp = 0.0
        gen_s = tool_s = 0.0
        request_id = uuid4().hex
        while row.finish is None:
            if row.pending is not None:
                t0 = time.perf_counter()
                await self.loop.run_in_executor(None, eng._run_tools, [row])
                tool_s += time.perf_counter() - t0
                continue
            remaining = eng.max_response_tokens - len(row.ids)
            max_new = max(1, min(eng.max_turn_tokens, remaining))
            params = dict(sampling_params, stop=list(self.stop_strings), max_tokens=max_new, **self.keep_stop)
            t0 = time.perf_counter()
            out = await self.server_manager.generate(
                request_id=request_id, prompt_ids=row.prompt_ids + row.ids, sampling_params=params
            )
            gen_s += time.perf_counter() - t0
            if out.stop_reason == "aborted":
                raise RuntimeError("etagent_tir: the rollout server aborted the request")
            ids = list(out.token_ids)
            lps = list(out.log_probs) if (want_lp and out.log_probs) else None
            comp, eos_id = self._completion(ids, lps, max_new)
            if eos_id is not None and lps:
                eos_lp = float(lps[-1])
            eng._on_completion(row, comp, remaining)
        response_ids, mask, logprobs = list(row.ids), list(row.mask), list(row.logprobs)
        if eos_id is not None:
            response_ids.append(eos_id)
            mask.append(1)
            logprobs.append(eos_lp)
        n = self.response_length
        results = sum(1 for s in row.segments if s[2] == "result")
        return AgentLoopOutput(
            prompt_ids=row.prompt_ids,
            response_ids=response_ids[:n],
            response_mask=mask[:n],
            response_logprobs=logprobs[:n] if want_lp else None,
            num_turns=1 + row.turns + results,  # user + assistant turns + tool results
            metrics={"generate_sequences": gen_s, "tool_calls": tool_s},
            extra_fields={
                "turn_scores": [],
                "tool_rewards": [],
                "model_tokens": protocol.model_token_length(mask[:n]),
                "n_executed": sum(c.status in EXECUTED_STATUSES for c in row.calls),
                "tool_s": tool_s,
                "finish_reason": row.finish,
            },
        )
