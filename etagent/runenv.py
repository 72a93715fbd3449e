"""The run environment: what every consumer of one run shares, built once from the composed config.

A run has one tag grammar, one success policy and one tool set; every piece of code that parses,
grades, counts or dispatches is handed them explicitly (there is no module-level default to fall
back on). :class:`RunEnv` holds them:

* ``grammar``: the configured tools' :class:`etagent.protocol.Grammar` (read from the tool
  classes of the ``tools`` config without building them): tags, stop strings, atomic tag
  tokens, system prompt, parser;
* ``grader``: the :class:`etagent.grading.Grader` of the task's answer domains
  (``task.domains``: one :class:`etagent.grading.DomainRule` node each) with ``grading.qa_metric``
  and ``grading.qa_threshold``; a stage with its own metric or threshold derives from it
  (``with_metric``, ``with_threshold``);
* ``toolset``: the built :class:`etagent.tools.ToolSet`, on first use (building the python pool
  is costly), closed by :meth:`close` (``with RunEnv(...)``);
* ``backend_kind``: what the configured backend class does with a policy (``hf`` | ``vllm`` |
  ``server``, ``GenerationBackend.kind``), read from its ``_target_`` without building it;
* ``dtype``, ``device``, ``system_prompt`` (what the policy is prompted with: None when
  ``model.use_system_prompt`` is false) and ``tool_prompt`` (``prompts.system``, else the
  grammar's prompt: what an exported dataset states).

``etagent.pipeline.components.run_env`` builds the pipeline's (once per run, tool set over this
run's world corpus); the verl plug-ins, which verl constructs without a run, compose etagent's
config and build theirs with :meth:`RunEnv.from_config`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Callable

from etagent.config.build import build
from etagent.config.errors import ConfigError
from etagent.grading import Grader, domain_rules
from etagent.protocol import Grammar


def grader_from_config(cfg: Any) -> Grader:
    """The run's :class:`Grader`: ``task.domains`` + the ``grading`` section."""
    task = cfg.get("task")
    node = task.get("domains") if task is not None else None
    if node is None:
        raise ConfigError("task.domains: the task node must name its answer domains' rules (a DomainRule node "
                          "per domain; built-in ones: `defaults: [/task/domains@domains: builtin]`, "
                          "conf/task/domains/builtin.yaml)")
    built = {str(k): build(v, f"task.domains.{k}") for k, v in node.items()}
    try:
        domains = domain_rules(built, "task.domains")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    g = cfg.grading
    return Grader(domains, qa_metric=g.qa_metric, qa_threshold=float(g.qa_threshold))


class RunEnv:
    """Grammar, grader, tool set, backend capabilities and dtype of one run (module docstring)."""

    def __init__(self, cfg: Any, grammar: Grammar, grader: Grader,
                 toolset_factory: Callable[[], Any] | None = None) -> None:
        self.cfg = cfg
        self.grammar = grammar
        self.grader = grader
        self._toolset_factory = toolset_factory
        self._toolset: Any = None

    @classmethod
    def from_config(cls, cfg: Any, toolset_factory: Callable[[], Any] | None = None) -> "RunEnv":
        """The environment of a composed config; ``toolset_factory()`` builds the tool set
        (default: every ``_target_`` node of ``cfg.tools``; its grammar must equal ``grammar``)."""
        from etagent.tools import config_grammar

        try:
            grammar = config_grammar(cfg.tools)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(cfg, grammar, grader_from_config(cfg), toolset_factory)

    # ------------------------------------------------------------------ tools
    @property
    def toolset(self) -> Any:
        """The built tool set (built on first use, then shared; :meth:`close` closes it)."""
        if self._toolset is None:
            if self._toolset_factory is None:
                from etagent.tools import build_toolset

                toolset = build_toolset(self.cfg.tools)
            else:
                toolset = self._toolset_factory()
            if getattr(toolset, "grammar", self.grammar) != self.grammar:
                toolset.close()
                raise ConfigError(f"tools: the built tool set's grammar {toolset.grammar} differs from the "
                                  f"configured one {self.grammar}")
            self._toolset = toolset
        return self._toolset

    def close(self) -> None:
        if self._toolset is not None:
            self._toolset.close()
            self._toolset = None

    def __enter__(self) -> "RunEnv":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ model and backend
    @cached_property
    def model(self) -> Any:
        """The built ``model`` node (:class:`etagent.models.factory.ModelSpec`)."""
        return build(self.cfg.model, "model")

    @property
    def dtype(self) -> str:
        """Weights dtype when a policy is loaded (``model.dtype``)."""
        return str(self.model.dtype)

    @property
    def device(self) -> str:
        return str(self.cfg.device)

    @cached_property
    def backend_kind(self) -> str:
        """``hf`` | ``vllm`` | ``server``: the configured backend class's ``kind``."""
        from hydra.utils import get_class

        from etagent.backends.base import BACKEND_KINDS

        target = str(self.cfg.backend._target_)
        try:
            kind = getattr(get_class(target), "kind", None)
        except Exception as exc:  # noqa: BLE001 - re-raised naming the key
            raise ConfigError(f"backend._target_: cannot import {target!r}: {exc}") from None
        if kind not in BACKEND_KINDS:
            raise ConfigError(f"backend._target_={target}: its class declares kind={kind!r}, expected one of "
                              f"{BACKEND_KINDS} (GenerationBackend.kind)")
        return kind

    @property
    def follows_weights(self) -> bool:
        """Whether the backend can be handed new weights (hf in process, vllm by reloading)."""
        return self.backend_kind in ("hf", "vllm")

    # ------------------------------------------------------------------ prompts
    @property
    def tool_prompt(self) -> str:
        """``prompts.system``, else the grammar's system prompt (the configured tools described)."""
        configured = (self.cfg.get("prompts") or {}).get("system")
        return str(configured) if configured else self.grammar.system_prompt

    @property
    def system_prompt(self) -> str | None:
        """What the policy is prompted with: :attr:`tool_prompt` if ``model.use_system_prompt``, else None."""
        return self.tool_prompt if bool(self.model.use_system_prompt) else None
