"""The run environment of the default config, for tests that build components by hand.

etagent has no module-level grammar or grader: a run's come from its composed config
(:class:`etagent.runenv.RunEnv`). Tests that do not compose a config use these, built the same
way from the default tools' classes and ``conf/task/domains/builtin.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from etagent.grading import Grader, domain_rules
from etagent.protocol import Grammar
from etagent.tools.python_sandbox import PythonSandbox
from etagent.tools.search.base import SearchTool

CONF = Path(__file__).resolve().parents[1] / "conf"

#: the grammar of conf/tools/default.yaml (python, then search)
GRAMMAR = Grammar([PythonSandbox.spec, SearchTool.spec])
#: the built-in answer domains' rules (conf/task/domains/builtin.yaml)
DOMAINS = domain_rules({k: instantiate(v) for k, v in OmegaConf.load(CONF / "task" / "domains" / "builtin.yaml").items()})


def grader(qa_metric: str | None = "f1", qa_threshold: float = 0.75) -> Grader:
    """A grader of the built-in domains (the default config's: f1, 0.75)."""
    return Grader(DOMAINS, qa_metric, qa_threshold)


#: the default config's grader (grading.qa_metric=f1, grading.qa_threshold=0.75)
GRADER = grader()
#: keyword arguments of the consumers that take both (labels, metrics)
ENV = {"grader": GRADER, "grammar": GRAMMAR}


class _Unused:
    """A tool of the default grammar that no test expects to be called."""

    def __init__(self, spec):
        self.spec, self.name = spec, spec.name

    def run_batch(self, queries):  # pragma: no cover - a test that reaches it is wrong
        raise AssertionError(f"tool {self.name} called with {queries}")

    def close(self) -> None:
        pass


def unused_toolset():
    """A ToolSet with the default grammar whose tools must not run (stages under test that only build engines)."""
    from etagent.tools.base import ToolSet

    return ToolSet({s.name: _Unused(s) for s in GRAMMAR.tools})
