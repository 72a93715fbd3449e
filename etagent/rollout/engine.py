"""Multi-turn tool-integrated rollouts: a batch of questions x n samples -> ``Trajectory`` records.

Loop (every row = one sampled response):

1. *Generate* for all rows that need it, in one backend call, until a tool-call closer
   (``</python>``, ``</search>``: one per tool of the grammar), the answer closer ``</answer>``, eos / ``<|im_end|>``, or a
   token budget.
2. *Dispatch*: ``</answer>`` or eos ends the row; a call closer makes the row's trailing call
   pending (parsed from the turn's text with ``Grammar.last_call``, leniently with the
   nearest opening tag when an unclosed ``<think>`` swallowed it).
3. *Tools*: ALL pending calls of the batch go to ``toolset.execute`` at once (concurrent
   inside); each result is wrapped by ``Grammar.format_result`` (truncated to
   ``max_result_chars``) and appended as forced tokens (mask 0, log-prob 0.0).
4. Finished rows leave the batch; the others go back to 1.

Grammar (``grammar``, the run's: equal to the tool set's ``toolset.grammar``): its tool tags are
what is parsed and dispatched, its stop strings are added to the sampling stop strings, and
format errors and behaviour labels are computed with it. ``grader`` (the run's
:class:`etagent.grading.Grader`) grades every answer and decides success for the labels.

Robustness: malformed output never raises. A closer without an opener, an empty call or a
call to a tool the toolset lacks gets an error result (status ``invalid`` / ``error``) and
the rollout carries on; unknown tags such as ``<code>`` are just text (format errors).
Budget (``budget``; a stage may pass its own per call, ``rollout(..., budget=)``): ``total``
(default; the official RL rollout) allows ``max_calls_total + extra_calls`` calls in all, and a
call over that limit is not run and ends the row at once (status ``budget``, no result block,
``finish_reason="budget"``); ``per_kind`` allows ``max_calls_per_kind + extra_calls`` calls of
each kind (an over-budget call is not executed: status ``budget`` and a result saying so; after
``budget_grace`` refused calls the row ends with ``finish_reason="budget"``);
``per_kind_then_answer`` (the released evaluation, flywheel and direct rollouts) allows as many
per kind, and a call over it is not run and gets no result: the row gets ONE more generation
(the *final turn*) so that the model can still answer, and ends after it (a call written there
is not run either: status ``budget``, ``finish_reason="budget"``). A turn that stops at
``max_turn_tokens`` with response tokens left also gets the final turn under this rule (the
released loop generates again whenever a turn ends without a call or an answer). At most
``max_turn_tokens`` per turn and ``max_response_tokens`` sampled+injected tokens (otherwise a
turn that hits either limit ends the row with ``max_tokens``; the last tool result may
overshoot the total by one result block).

Answer extraction (``answer_extraction``, :data:`etagent.grading.ANSWER_EXTRACTIONS`):
``strict`` credits only the ``\\boxed{}`` of a closed answer block; ``official_eval`` is the
released evaluator's reading and ``official_reward`` the released RL reward's (see
:func:`etagent.grading.extract_for`).

Token ids are kept end to end: ``response_ids`` is exactly the backend's sampled ids plus
the injected ids (never decode/re-encode). Sampled eos ids are not part of the response
(backend contract). ``response_text`` is the whole-sequence decode (decoding pieces could
differ at byte boundaries).

KV reuse: a backend whose ``generate`` takes ``states`` gets each row's last
``Completion.state`` with its next prefix and prefills only the new tokens (the backend
checks the state still matches the prefix; forks start without one).

Prefixes (flywheel continuation): ``prefixes[i]`` is a response prefix *text* for example
``i``; it is encoded with ``Grammar.encode_response`` (result blocks mask 0) and its other
tokens get mask 1 if ``treat_prefix_as_model`` else 0; log-probs 0.0 (the RL trainer
recomputes old log-probs). Calls in the prefix count towards the budget (recorded with status
``ok``: their status is unknown from text) and a prefix ending with a closed call without a
result has that call executed before sampling starts.

Timing: per trajectory ``gen_s``/``tool_s`` are the wall times of the batched generate /
tool calls it took part in (it waited that long), ``total_s`` its wall time until it
finished; ``engine.last_stats`` has the batch totals (generation, tools, overhead).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from etagent import grading, protocol
from etagent.backends.base import EOS, LENGTH, Completion, GenerationBackend, SamplingParams
from etagent.behaviour import label_behaviour
from etagent.models.prompting import build_prompt_ids
from etagent.records import BUDGET, ERROR, INVALID, OK, Example, ToolCall, Trajectory
from etagent.rollout.branching import EntropyBrancher
from etagent.tools.base import TOOL_STATUSES, truncate_text

STRATEGIES = ("standard", "branching")
# finish reasons of a trajectory
F_ANSWER, F_BUDGET, F_MAX_TOKENS, F_ERROR, F_STOP, F_EOS = "answer", "budget", "max_tokens", "error", "stop", "eos"
_SEED_STRIDE = 1_000_003  # distinct seed per generate round


@dataclass
class _Row:
    ex: int  # example index
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    segments: list[list[Any]] = field(default_factory=list)  # [start, end, "model"|"result"|"prefix"]
    pending: tuple[str, str] | None = None  # (kind, query) awaiting execution
    refused: int = 0
    turns: int = 0
    finish: str | None = None
    h_init: float | None = None
    parent: int | None = None
    gen_s: float = 0.0
    tool_s: float = 0.0
    t0: float = 0.0
    t_end: float = 0.0
    uid: int = 0
    kv: Any = None  # the backend's continuation state from the last turn (KV reuse); forks start without
    final_turn: bool = False  # per_kind_then_answer: the next generation is the last one

    def add(self, ids: Sequence[int], mask: int, logprobs: Sequence[float] | None, kind: str) -> None:
        start = len(self.ids)
        self.ids.extend(ids)
        self.mask.extend([mask] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))
        if ids:
            self.segments.append([start, len(self.ids), kind])

    def fork(self, uid: int, upto: tuple[int, int, int]) -> "_Row":
        """A copy of this row as it was after ``upto`` = (n ids, n calls, n segments)."""
        n_ids, n_calls, n_segs = upto
        return _Row(ex=self.ex, prompt_ids=self.prompt_ids, ids=self.ids[:n_ids], mask=self.mask[:n_ids],
                    logprobs=self.logprobs[:n_ids], calls=list(self.calls[:n_calls]),
                    counts=_count(self.calls[:n_calls]), segments=[list(s) for s in self.segments[:n_segs]],
                    refused=self.refused, turns=self.turns, h_init=self.h_init, parent=self.uid,
                    gen_s=self.gen_s, tool_s=self.tool_s, t0=self.t0, uid=uid,
                    final_turn=self.final_turn)


def _count(calls: Sequence[ToolCall]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in calls:
        if c.status != BUDGET:
            counts[c.kind] = counts.get(c.kind, 0) + 1
    return counts


BUDGETS = ("total", "per_kind", "per_kind_then_answer")


class RolloutEngine:
    """Batched multi-turn TIR rollouts over any :class:`GenerationBackend` and tool set."""

    def __init__(self, backend: GenerationBackend, toolset: Any, grader: grading.Grader, grammar: protocol.Grammar,
                 *, system_prompt: str | None, max_calls_per_kind: int = 6, max_response_tokens: int = 512,
                 max_turn_tokens: int = 256, max_result_chars: int = 256, strategy: Literal["standard", "branching"] = "standard",
                 branching: dict | EntropyBrancher | None = None, treat_prefix_as_model: bool = False, budget_grace: int = 2,
                 budget: Literal["total", "per_kind", "per_kind_then_answer"] = "total", max_calls_total: int = 6,
                 label_behaviour: bool = True, progress_min_rows: int = 256,
                 answer_extraction: Literal["strict", "official_eval", "official_reward"] = "strict"):
        if strategy not in STRATEGIES:
            raise ValueError(f"rollout.strategy must be one of {STRATEGIES}, got {strategy!r}")
        for key, val in (("max_response_tokens", max_response_tokens), ("max_turn_tokens", max_turn_tokens)):
            if val < 1:
                raise ValueError(f"rollout.{key} must be >= 1, got {val}")
        if max_calls_per_kind < 0 or max_calls_total < 0 or budget_grace < 1:
            raise ValueError("rollout.max_calls_per_kind and rollout.max_calls_total must be >= 0 and "
                             "rollout.budget_grace >= 1")
        if budget not in BUDGETS:
            raise ValueError(f"rollout.budget must be one of {BUDGETS}, got {budget!r}")
        if answer_extraction not in grading.ANSWER_EXTRACTIONS:
            raise ValueError(f"answer_extraction must be one of {grading.ANSWER_EXTRACTIONS}, got {answer_extraction!r}")
        self.budget = budget
        self._mode = budget  # the budget rule of the current rollout call (rollout(..., budget=))
        self.answer_extraction = answer_extraction
        self.max_calls_total = int(max_calls_total)
        self.backend = backend
        self._pass_states = "states" in inspect.signature(backend.generate).parameters
        self.tokenizer = backend.tokenizer
        if not isinstance(grader, grading.Grader):
            raise TypeError(f"RolloutEngine: grader must be the run's etagent.grading.Grader, got {type(grader).__name__}")
        if not isinstance(grammar, protocol.Grammar):
            raise TypeError(f"RolloutEngine: grammar must be the run's etagent.protocol.Grammar, got {type(grammar).__name__}")
        if getattr(toolset, "grammar", grammar) != grammar:
            raise ValueError(f"RolloutEngine: the tool set's grammar {toolset.grammar} is not the run's {grammar}")
        self.toolset = toolset
        # the tags this engine stops on, parses and dispatches: the tool set's own
        self.grammar: protocol.Grammar = grammar
        self.grader: grading.Grader = grader
        self.system_prompt = system_prompt
        self.max_calls_per_kind = int(max_calls_per_kind)
        self.max_response_tokens = int(max_response_tokens)
        self.max_turn_tokens = int(max_turn_tokens)
        self.max_result_chars = int(max_result_chars)
        self.strategy = strategy
        if strategy == "branching":
            self.brancher = branching if isinstance(branching, EntropyBrancher) else EntropyBrancher(**dict(branching or {}))
        else:
            self.brancher = None
        self.treat_prefix_as_model = treat_prefix_as_model
        self.budget_grace = int(budget_grace)
        self.label_behaviour = label_behaviour
        # a progress bar (finished rows) for rollout calls at least this big; 0 = never
        self.progress_min_rows = int(progress_min_rows)
        self.progress_desc = "rollout"
        self.last_stats: dict[str, float] = {}
        self._enc_cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ helpers
    def _next_uid(self) -> int:
        self._uid = getattr(self, "_uid", 0) + 1
        return self._uid

    def _encode(self, text: str) -> list[int]:
        if text not in self._enc_cache:  # results repeat a lot (budget/error messages)
            if len(self._enc_cache) > 4096:
                self._enc_cache.clear()
            self._enc_cache[text] = list(self.tokenizer.encode(text, add_special_tokens=False))
        return self._enc_cache[text]

    def _prompt_ids(self, ex: Example) -> list[int]:
        return build_prompt_ids(self.tokenizer, ex.question, self.system_prompt)

    def _init_prefix(self, row: _Row, prefix: str, as_model: bool) -> None:
        g = self.grammar
        ids, mask = g.encode_response(self.tokenizer, prefix)
        start = 0
        for i in range(1, len(ids) + 1):  # segments of equal mask
            if i == len(ids) or mask[i] != mask[start]:
                m = mask[start] if as_model else 0
                row.add(ids[start:i], m, None, "prefix" if mask[start] else "result")
                start = i
        parsed = g.parse(prefix)
        segs = parsed.segments
        for k, s in enumerate(segs):
            if s.kind in g.tool_tags and s.closed:
                nxt = next((t for t in segs[k + 1 :] if not (t.kind == protocol.TEXT and not t.content.strip())), None)
                if nxt is not None and nxt.kind == protocol.RESULT:
                    row.calls.append(ToolCall(s.kind, s.content, nxt.content.strip(), OK, 0.0))
        row.counts = _count(row.calls)
        if len(row.ids) >= self.max_response_tokens:
            row.finish = F_MAX_TOKENS
            return
        call = g.last_call(prefix)
        if call is not None:  # the prefix ends with a call: run it before sampling
            self._queue_call(row, call.kind, call.content)

    def _budget(self, extra_calls: int) -> int:
        base = self.max_calls_total if self._mode == "total" else self.max_calls_per_kind
        return base + int(extra_calls)

    def _queue_call(self, row: _Row, kind: str, query: str, budget: int | None = None) -> None:
        """Make ``(kind, query)`` the row's pending call, or answer it at once when it cannot run."""
        budget = self._cur_budget if budget is None else budget
        if not query.strip():
            row.counts[kind] = row.counts.get(kind, 0) + 1
            self._inject(row, ToolCall(kind, query, f"Error: empty <{kind}> call.", INVALID, 0.0))
            return
        if self._mode == "total" and sum(row.counts.values()) >= budget:
            # official RL rollout: the call over the total limit is not run and the response
            # ends there (no result block); recorded with status budget
            row.calls.append(ToolCall(kind, query, "", BUDGET, 0.0))
            row.refused += 1
            row.finish = F_BUDGET
            return
        if self._mode == "per_kind_then_answer" and row.counts.get(kind, 0) >= budget:
            # released evaluation (evaluation/src/sample_processor.py, SampleProcessor.run) and flywheel /
            # direct rollouts (flywheel/src/sample_processor.py generate_initial_trajectory): the call over
            # the per-kind limit is not run and gets no result; one more generation follows
            self._refuse(row, kind, query)
            return
        if self._mode == "per_kind" and row.counts.get(kind, 0) >= budget:
            row.refused += 1
            msg = f"Error: tool budget exhausted, at most {budget} <{kind}> calls are allowed."
            self._inject(row, ToolCall(kind, query, msg, BUDGET, 0.0))
            if row.refused >= self.budget_grace:
                row.finish = F_BUDGET
            return
        row.counts[kind] = row.counts.get(kind, 0) + 1
        row.pending = (kind, query)

    def _refuse(self, row: _Row, kind: str, query: str) -> None:
        """per_kind_then_answer: record a call that is not run; the row's next turn is its last."""
        row.calls.append(ToolCall(kind, query, "", BUDGET, 0.0))
        row.refused += 1
        if row.final_turn:
            row.finish = F_BUDGET
        else:
            row.final_turn = True

    def _inject(self, row: _Row, call: ToolCall) -> None:
        body = truncate_text(call.result.strip(), self.max_result_chars)[0]
        call.result = body
        row.calls.append(call)
        row.add(self._encode(self.grammar.format_result(body)), 0, None, "result")
        if len(row.ids) >= self.max_response_tokens and row.finish is None:
            row.finish = F_MAX_TOKENS

    # ------------------------------------------------------------------ turn handling
    def _on_completion(self, row: _Row, comp: Completion, remaining: int) -> None:
        ids, lps, finish, stop = list(comp.ids), comp.logprobs, comp.finish_reason, comp.stop
        if len(ids) > remaining:  # cut to the row's budget: a prefix of a sample is a sample
            ids, lps, finish, stop = ids[:remaining], (lps[:remaining] if lps else lps), LENGTH, None
        row.add(ids, 1, list(lps) if lps else None, "model")
        row.turns += 1
        final = row.final_turn
        if finish == EOS:
            row.finish = F_EOS
        elif finish == LENGTH:
            if self._mode == "per_kind_then_answer" and not final and len(row.ids) < self.max_response_tokens:
                row.final_turn = True  # the turn cap, not the response's: one more generation to answer
            else:
                row.finish = F_MAX_TOKENS
        elif stop == protocol.ANSWER_STOP_STRING:
            row.finish = F_ANSWER
        elif stop in self.grammar.call_kind and final:
            # released: the loop ends after the final generation, so a call written there never runs
            kind = self.grammar.call_kind[stop]
            call = self.grammar.last_call(self.tokenizer.decode(ids, skip_special_tokens=False))
            self._refuse(row, kind, call.content if call is not None and call.kind == kind else "")
        elif stop in self.grammar.call_kind:
            self._parse_call(row, ids, stop)
        else:
            row.finish = F_STOP
        if final and row.finish is None:  # the final turn is the last one, whatever it wrote
            row.finish = F_BUDGET

    def _parse_call(self, row: _Row, turn_ids: list[int], stop: str) -> None:
        kind = self.grammar.call_kind[stop]
        text = self.tokenizer.decode(turn_ids, skip_special_tokens=False)
        call = self.grammar.last_call(text)
        if call is not None and call.kind == kind:
            self._queue_call(row, kind, call.content)
            return
        # Lenient: the nearest opener before the closer (e.g. inside an unclosed <think>).
        end = text.rfind(stop)
        start = text.rfind(protocol.open_tag(kind), 0, max(end, 0))
        if end < 0 or start < 0:
            row.counts[kind] = row.counts.get(kind, 0) + 1
            self._inject(row, ToolCall(kind, "", f"Error: {stop} without a matching <{kind}>; no call was made.", INVALID, 0.0))
            return
        self._queue_call(row, kind, text[start + len(protocol.open_tag(kind)) : end])

    def _run_tools(self, rows: list[_Row]) -> float:
        calls = [r.pending for r in rows]
        t0 = time.perf_counter()
        try:
            if self.toolset is None:
                raise RuntimeError("no toolset configured")
            results = self.toolset.execute(list(calls))
            if len(results) != len(calls):
                raise RuntimeError(f"toolset returned {len(results)} results for {len(calls)} calls")
        except Exception as exc:  # noqa: BLE001 - a broken tool set must not kill the batch
            results = [None] * len(calls)
            err = f"Error: tool execution failed: {type(exc).__name__}: {exc}"
        dt = time.perf_counter() - t0
        for row, (kind, query), res in zip(rows, calls, results):
            row.pending = None
            row.tool_s += dt
            if res is None:
                call = ToolCall(kind, query, err, ERROR, dt)
            else:
                status = res.status if res.status in TOOL_STATUSES else ERROR
                call = ToolCall(kind, query, res.output, status, float(res.wall_s))
            self._inject(row, call)
        return dt

    # ------------------------------------------------------------------ main loop
    def rollout(self, examples: list[Example], n: int, params: SamplingParams, prefixes: list[str] | None = None,
                extra_calls: int = 0, group_prefix: str = "", treat_prefix_as_model: bool | None = None,
                budget: str | None = None) -> list[Trajectory]:
        """``budget``: this call's budget rule (a stage's own, e.g. Pareto sampling); None = ``self.budget``."""
        if n < 1:
            raise ValueError(f"rollout n must be >= 1, got {n}")
        if budget is not None and budget not in BUDGETS:
            raise ValueError(f"rollout budget must be one of {BUDGETS}, got {budget!r}")
        self._mode = budget or self.budget
        if prefixes is not None and len(prefixes) != len(examples):
            raise ValueError(f"rollout: {len(prefixes)} prefixes for {len(examples)} examples")
        as_model = self.treat_prefix_as_model if treat_prefix_as_model is None else treat_prefix_as_model
        missing = tuple(s for s in self.grammar.stop_strings if s not in params.stop)
        if missing:  # the sampler stops after every call closer of the grammar and after </answer>
            params = params.replace(stop=tuple(params.stop) + missing)
        self._cur_budget = self._budget(extra_calls)
        t_start = time.perf_counter()
        stats = {"gen_s": 0.0, "tool_s": 0.0, "generate_calls": 0, "tool_batches": 0, "tool_calls": 0}
        prompts = [self._prompt_ids(ex) for ex in examples]
        per_ex: list[list[_Row]] = [[] for _ in examples]

        def new_row(i: int) -> _Row:
            row = _Row(ex=i, prompt_ids=prompts[i], t0=time.perf_counter(), uid=self._next_uid())
            if prefixes is not None and prefixes[i]:
                self._init_prefix(row, prefixes[i], as_model)
            per_ex[i].append(row)
            return row

        n_first = self.brancher.n_initial(n) if self.brancher else n
        for i in range(len(examples)):
            for _ in range(n_first):
                new_row(i)
        rnd = 0
        bar = None
        n_rows = sum(len(r) for r in per_ex)
        if self.progress_min_rows and n_rows >= self.progress_min_rows:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_rows, desc=self.progress_desc, unit="rollout", leave=False, dynamic_ncols=True)
        while True:
            if bar is not None:
                done = sum(1 for rows in per_ex for r in rows if r.finish is not None)
                bar.total = max(bar.total, sum(len(r) for r in per_ex))
                bar.update(done - bar.n)
            if self.brancher is not None:  # top up groups whose chains all ended short of n
                for i, rows in enumerate(per_ex):
                    if len(rows) < n and all(r.finish is not None for r in rows):
                        for _ in range(n - len(rows)):
                            new_row(i)
            active = [r for rows in per_ex for r in rows if r.finish is None]
            # tools first (rows whose prefix ended with a call), then generation
            tool_rows = [r for r in active if r.pending is not None]
            if tool_rows:
                stats["tool_s"] += self._run_tools(tool_rows)
                stats["tool_batches"] += 1
                stats["tool_calls"] += len(tool_rows)
                for r in tool_rows:
                    if r.finish is not None:
                        r.t_end = time.perf_counter()
            gen_rows = [r for r in active if r.finish is None and r.pending is None]
            if gen_rows:
                rnd += 1
                self._generate_round(gen_rows, params, rnd, stats, per_ex, n)
            elif not tool_rows:
                break
        if bar is not None:
            bar.close()
        total = time.perf_counter() - t_start
        stats.update(total_s=total, overhead_s=max(0.0, total - stats["gen_s"] - stats["tool_s"]))
        trajs = self._finalise(examples, per_ex, group_prefix)
        stats["finalise_s"] = time.perf_counter() - t_start - total
        stats["response_tokens"] = float(sum(len(t.response_ids) for t in trajs))
        stats["model_tokens"] = float(sum(t.model_tokens for t in trajs))
        self.last_stats = stats
        return trajs

    def _generate_round(self, rows: list[_Row], params: SamplingParams, rnd: int, stats: dict, per_ex, n: int) -> None:
        remaining = [self.max_response_tokens - len(r.ids) for r in rows]
        max_new = max(1, min(self.max_turn_tokens, max(remaining)))
        seed = None if params.seed is None else int(params.seed) + _SEED_STRIDE * rnd
        # identical prefixes (first turn of a group) go as one prompt with n samples
        keys = [tuple(r.prompt_ids) + (-1,) + tuple(r.ids) for r in rows]
        groups: dict[tuple, list[int]] = {}
        for k, key in enumerate(keys):
            groups.setdefault(key, []).append(k)
        sizes = {len(v) for v in groups.values()}
        if len(sizes) == 1 and len(groups) < len(rows):
            k_n = sizes.pop()
            order = list(groups.values())
            prefixes = [rows[g[0]].prompt_ids + rows[g[0]].ids for g in order]
            sp = params.replace(n=k_n, max_new_tokens=max_new, seed=seed)
        else:
            order = [[k] for k in range(len(rows))]
            prefixes = [r.prompt_ids + r.ids for r in rows]
            sp = params.replace(n=1, max_new_tokens=max_new, seed=seed)
        t0 = time.perf_counter()
        if self._pass_states:  # KV reuse: each row continues from its last turn's state (checked by the backend)
            outs = self.backend.generate(prefixes, sp, states=[rows[g[0]].kv for g in order])
        else:
            outs = self.backend.generate(prefixes, sp)
        dt = time.perf_counter() - t0
        stats["gen_s"] += dt
        stats["generate_calls"] += 1
        if len(outs) != len(prefixes):
            raise RuntimeError(f"backend returned {len(outs)} outputs for {len(prefixes)} prefixes")
        for members, comps in zip(order, outs):
            for k, comp in zip(members, comps):
                row = rows[k]
                row.gen_s += dt
                snapshot = (len(row.ids), len(row.calls), len(row.segments))
                if self.brancher is not None:
                    self._maybe_branch(row, comp, snapshot, per_ex, n)
                self._on_completion(row, comp, remaining[k])
                row.kv = comp.state if row.finish is None else None
                if row.finish is not None:
                    row.t_end = time.perf_counter()

    def _maybe_branch(self, row: _Row, comp: Completion, snapshot, per_ex, n: int) -> None:
        h = self.brancher.entropy(comp.entropies, comp.logprobs)
        if row.turns == 0 and not row.calls:
            row.h_init = h
            return
        if not row.segments or row.segments[-1][2] != "result":
            return  # only right after a tool result
        k = self.brancher.n_branches(h, row.h_init, n - len(per_ex[row.ex]))
        for _ in range(k):  # the forks restart right after the tool result
            fork = row.fork(self._next_uid(), snapshot)
            fork.t0 = time.perf_counter()
            per_ex[row.ex].append(fork)

    # ------------------------------------------------------------------ output
    def _finalise(self, examples: list[Example], per_ex: list[list[_Row]], group_prefix: str) -> list[Trajectory]:
        out: list[Trajectory] = []
        for ex, rows in zip(examples, per_ex):
            group_id = f"{group_prefix}{ex.id}"
            trajs = []
            index = {r.uid: k for k, r in enumerate(rows)}
            for k, row in enumerate(rows):
                text = self.tokenizer.decode(row.ids, skip_special_tokens=False)
                # strict: credit only from a closed <answer>..\boxed{}..</answer>; official_*: the released readers
                answer = grading.extract_for(text, self.answer_extraction, ex.domain, self.grammar)
                try:
                    correct = float(self.grader(ex, answer))
                except Exception as exc:  # noqa: BLE001 - a grader bug must not lose the batch
                    correct, grade_error = 0.0, f"{type(exc).__name__}: {exc}"
                else:
                    grade_error = None
                meta: dict[str, Any] = {"sample": k, "strategy": self.strategy, "segments": row.segments,
                                        "turns": row.turns}
                if row.parent is not None:
                    meta["parent"] = f"{group_id}#{index[row.parent]}"
                if grade_error:
                    meta["grade_error"] = grade_error
                t_end = row.t_end or time.perf_counter()
                trajs.append(Trajectory(
                    id=f"{group_id}#{k}", example_id=ex.id, group_id=group_id, response_text=text,
                    prompt_ids=list(row.prompt_ids), response_ids=list(row.ids), response_mask=list(row.mask),
                    logprobs=list(row.logprobs), tool_calls=list(row.calls), answer=answer, score=correct,
                    finish_reason=row.finish or F_ERROR,
                    format_errors=[e.code for e in self.grammar.validate(text)],
                    timing={"gen_s": row.gen_s, "tool_s": row.tool_s, "total_s": max(0.0, t_end - row.t0)},
                    meta=meta,
                ))
            if self.label_behaviour:
                self._label(trajs, ex)
            out.extend(trajs)
        return out

    def _label(self, trajs: list[Trajectory], ex: Example) -> None:
        for t in trajs:
            t.behaviour = dict(label_behaviour(t, ex, trajs, grader=self.grader, grammar=self.grammar))
