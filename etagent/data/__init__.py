"""Question sources: real benchmark files (:mod:`etagent.data.benchmarks`) and the
embedded synthetic world (:mod:`etagent.data.synthetic`). Every task object exposes
``.name``, ``.domain``, ``.metric`` and ``.load(split) -> list[Example]``."""

from etagent.data.benchmarks import BenchmarkTask, MultiTask, load_examples, normalize_answers

__all__ = ["BenchmarkTask", "MultiTask", "load_examples", "normalize_answers"]
