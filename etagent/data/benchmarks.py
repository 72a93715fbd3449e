"""Load benchmark question files (JSONL / JSON list / parquet, or a HF hub dataset) into
:class:`~etagent.records.Example`, and the Hydra-instantiable task objects built on them.

Field names differ between files (``problem`` vs ``question``; answers as a string, a
number, a boolean or a list of aliases; every task YAML names its ``question_fields`` /
``answer_field``): :func:`load_examples` normalises them (numbers and booleans become
strings, as in the official evaluator) and fails on the first unreadable row with
``file:line`` (JSONL), ``file:item N`` (JSON) or ``file:row N`` (parquet), the offending
key and the fields the row has.

Ids are ``f"{source}-{row id}"`` when the row has an id, else ``f"{source}-{line}"``
(1-based), so ids stay unique when several benchmarks are mixed (AIME24 and AMC23 both
use small integers) and stable across runs. The raw row id is kept in ``meta['row_id']``.

Task objects share one interface with the synthetic task: ``.name``, ``.domain``,
``.metric``, ``.domains`` (the task node's answer-domain rules, :class:`etagent.grading.DomainRule`)
and ``.load(split) -> list[Example]``. Benchmarks are evaluation-only, so they only have the
``test`` split; each loaded example carries its task's metric in ``meta['metric']`` (the
:class:`etagent.grading.Grader` uses it for domains whose metric the run does not fix).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from etagent.grading import check_domain, domain_rules
from etagent.records import Example
from etagent.utils.io import read_json

SUFFIXES = (".jsonl", ".json", ".parquet")
DEFAULT_QUESTION_FIELDS: tuple[str, ...] = ("question", "problem")


# --------------------------------------------------------------------------- raw rows


def _to_py(value: Any) -> Any:
    """numpy / pyarrow scalars and arrays (parquet via pandas) -> plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _to_py(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_py(v) for v in value]
    return value


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield str(lineno), json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    data = read_json(path)
    if isinstance(data, Mapping) and isinstance(data.get("data"), list):
        data = data["data"]  # {"data": [...]} wrapper (SQuAD-like dumps)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    for i, row in enumerate(data, 1):
        yield f"item {i}", row


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pandas as pd  # lazy: only parquet needs it

    df = pd.read_parquet(path)
    for i, row in enumerate(df.to_dict(orient="records"), 1):
        yield f"row {i}", _to_py(row)


def _iter_hf(hf_name: str, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets  # lazy and optional: only for configured hub datasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"task uses hf_name={hf_name!r} but the `datasets` package is not installed (pip install datasets)"
        ) from exc
    ds = datasets.load_dataset(hf_name, split=split)  # pragma: no cover - needs network/cache
    for i, row in enumerate(ds, 1):  # pragma: no cover
        yield f"row {i}", _to_py(dict(row))


def iter_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(location, row) pairs of a question file; location is a line/item/row label."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _iter_jsonl(path)
    if suffix == ".json":
        return _iter_json(path)
    if suffix == ".parquet":
        return _iter_parquet(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of {SUFFIXES}")


# --------------------------------------------------------------------------- normalisation


def _answer_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)  # "True"/"False": loaded as strings, as the official evaluator does
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def normalize_answers(value: Any) -> list[str]:
    """Gold answer(s) as a non-empty list of strings; ValueError if that is impossible."""
    value = _to_py(value)
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        text = _answer_text(item)
        if text is None:
            raise ValueError(f"answer {item!r} is not a non-empty string or number")
        if text not in out:
            out.append(text)
    if not out:
        raise ValueError("answer list is empty")
    return out


def row_to_example(
    row: Any,
    *,
    source: str,
    domain: str,
    split: str,
    lineno: str,
    id_field: str | None,
    question_fields: Sequence[str],
    answer_field: str,
) -> Example:
    """One raw row -> Example (raises ValueError without location; the caller adds it)."""
    if not isinstance(row, Mapping):
        raise ValueError(f"row is a {type(row).__name__}, expected an object")
    found = f"fields found: {sorted(map(str, row))}"
    qkey = next((k for k in question_fields if isinstance(row.get(k), str) and row[k].strip()), None)
    if qkey is None:
        raise ValueError(f"missing question: none of the keys {list(question_fields)} holds a non-empty string "
                         f"({found}; set task.question_fields)")
    if answer_field not in row:
        raise ValueError(f"missing key {answer_field!r} ({found}; set task.answer_field)")
    try:
        answers = normalize_answers(row[answer_field])
    except ValueError as exc:
        raise ValueError(f"key {answer_field!r}: {exc}") from None
    id_key = id_field or "id"
    if id_field is not None and row.get(id_field) is None:
        raise ValueError(f"missing id key {id_field!r}")
    row_id = row.get(id_key)
    number = lineno.split()[-1]  # "12" / "item 12" / "row 12" -> "12"
    ex_id = f"{source}-{row_id}" if row_id is not None and str(row_id).strip() else f"{source}-{number}"
    used = {qkey, answer_field, id_key, *question_fields}
    meta = {k: v for k, v in row.items() if k not in used}
    if row_id is not None:
        meta["row_id"] = row_id
    return Example(
        id=ex_id, question=row[qkey].strip(), answers=answers, domain=domain, source=source, split=split, meta=meta
    )


def load_examples(
    path: str | Path | None,
    source: str,
    domain: str,
    split: str = "test",
    limit: int | None = None,
    id_field: str | None = None,
    question_fields: Sequence[str] = DEFAULT_QUESTION_FIELDS,
    answer_field: str = "answer",
    hf_name: str | None = None,
    hf_split: str | None = None,
) -> list[Example]:
    """Read a question file (or a HF hub dataset when ``hf_name`` is set) into Examples.

    ``limit`` keeps the first N rows. Unreadable rows and duplicate ids raise ValueError
    naming the file and line/item/row. ``domain`` is the caller's (a task checks it against its
    ``domains``).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"{source}: limit must be >= 0 or null, got {limit}")
    question_fields = tuple(question_fields)
    if hf_name:
        label, rows = f"hf:{hf_name}[{hf_split or split}]", _iter_hf(hf_name, hf_split or split)
    elif path is None:
        raise ValueError(f"{source}: neither a path nor hf_name is configured")
    else:
        label, rows = str(path), iter_rows(path)
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for lineno, row in rows:
        if limit is not None and len(examples) >= limit:
            break
        where = f"{label}:{lineno}"
        try:
            ex = row_to_example(
                row,
                source=source,
                domain=domain,
                split=split,
                lineno=lineno,
                id_field=id_field,
                question_fields=question_fields,
                answer_field=answer_field,
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if ex.id in seen:
            raise ValueError(f"{where}: duplicate id {ex.id!r} (first at {seen[ex.id]})")
        seen[ex.id] = where
        examples.append(ex)
    return examples


# --------------------------------------------------------------------------- tasks


class BenchmarkTask:
    """One evaluation benchmark (``conf/task/<name>.yaml``); only the ``test`` split exists.

    A plain class, not a dataclass, on purpose: Hydra's recursive instantiate turns nested
    dataclass instances back into DictConfig, which would break :class:`MultiTask`.
    """

    splits: tuple[str, ...] = ("test",)

    def __init__(
        self,
        name: str,
        domain: str,
        path: str | None = None,
        metric: str | None = None,  # one of the domain rule's metrics; None -> the domain's own
        limit: int | None = None,
        source: str | None = None,  # Example.source; defaults to name
        id_field: str | None = None,
        question_fields: Sequence[str] = DEFAULT_QUESTION_FIELDS,
        answer_field: str = "answer",
        hf_name: str | None = None,
        hf_split: str | None = None,
        *,
        domains: Mapping[str, Any],
    ) -> None:
        self.domains = domain_rules(domains, f"task {name}: domains")
        rule = self.domains[check_domain(domain, self.domains, f"task {name}")]
        metric = metric or rule.metric
        if metric not in rule.fns:
            raise ValueError(f"task {name}: metric must be one of {sorted(rule.fns)} (domain {domain!r}), got {metric!r}")
        self.name, self.domain, self.path, self.metric, self.limit = name, domain, path, metric, limit
        self.source = source or name
        self.id_field, self.answer_field = id_field, answer_field
        self.question_fields = tuple(question_fields)  # ListConfig from Hydra -> tuple
        self.hf_name, self.hf_split = hf_name, hf_split

    def __repr__(self) -> str:
        where = f"hf_name={self.hf_name!r}" if self.hf_name else f"path={self.path!r}"
        return f"BenchmarkTask(name={self.name!r}, domain={self.domain!r}, metric={self.metric!r}, {where}, limit={self.limit})"

    def load(self, split: str = "test") -> list[Example]:
        if split not in self.splits:
            raise ValueError(
                f"task {self.name} is an evaluation benchmark with only the {list(self.splits)} split; "
                f"split {split!r} is not available (train on the synthetic task or a custom file)"
            )
        examples = load_examples(
            self.path,
            source=self.source,
            domain=self.domain,
            split=split,
            limit=self.limit,
            id_field=self.id_field,
            question_fields=self.question_fields,
            answer_field=self.answer_field,
            hf_name=self.hf_name,
            hf_split=self.hf_split,
        )
        for ex in examples:
            ex.meta["metric"] = self.metric
        return examples


class MultiTask:
    """Several tasks evaluated together (``paper_math``, ``paper_qa``); loads their union.

    ``tasks`` is a mapping name -> task (or a list of tasks), each with ``.name`` and
    ``.load(split)``. ``limit`` caps each member task (not the union).
    """

    def __init__(self, name: str, tasks: Mapping[str, Any] | Sequence[Any], limit: int | None = None, *,
                 domains: Mapping[str, Any]):
        members = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
        if not members:
            raise ValueError(f"task {name}: `tasks` is empty")
        self.domains = domain_rules(domains, f"task {name}: domains")
        for t in members:
            if not callable(getattr(t, "load", None)):
                raise ValueError(f"task {name}: member {t!r} has no load(split) method (missing _target_?)")
            check_domain(t.domain, self.domains, f"task {name}: member {t.name}")
        self.name = name
        self.tasks = members
        self.limit = limit

    @property
    def domain(self) -> str:
        domains = {t.domain for t in self.tasks}
        return domains.pop() if len(domains) == 1 else "mixed"

    @property
    def metric(self) -> str | None:
        metrics = {getattr(t, "metric", None) for t in self.tasks}
        return metrics.pop() if len(metrics) == 1 else None  # mixed: per example (meta['metric'])

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def load(self, split: str = "test") -> list[Example]:
        out: list[Example] = []
        for t in self.tasks:
            examples = t.load(split)
            out.extend(examples if self.limit is None else examples[: self.limit])
        return out
