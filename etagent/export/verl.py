"""Export training questions as a verl RL parquet (and read one back).

The file has exactly the schema of the authors' RL parquet
(``../shared/benchmarks/verl_valid_reference.parquet``, :data:`VERL_SCHEMA`):

* ``data_source``: ``math_effi_rl`` / ``qa_effi_rl`` (by domain; the reward module keys
  on it) unless a ``data_source`` is given;
* ``prompt``: ``[{"role": "system", "content": <system prompt>}, {"role": "user",
  "content": <question verbatim>}]`` -- the chat messages verl renders with the model's
  chat template (struct fields ``content``, ``role``, in that order);
* ``ability``: the domain (``math`` / ``qa``);
* ``reward_model``: ``{"ground_truth": [gold aliases...], "style": "rule"}``;
* ``extra_info``: ``{"index": int64 row number, "need_tools_kwargs": True, "question":
  <question>, "split": <split>}`` -- ``index`` is what verl copies to the batch's
  ``index`` and what :func:`etagent.export.verl_reward.shape_group_scores` groups by;
* ``metadata``: an all-null column.

Departure: the authors' prompt is their own tool system prompt; etagent writes the run's
(``system_prompt``, required: the pipeline passes ``RunEnv.tool_prompt``, i.e. ``prompts.system``
or the configured tools' grammar prompt), ``None`` omits the system message.
Example ids have no column in the schema: :func:`export_verl` writes them, in index
order, to a sidecar ``<file>.ids.json`` so a verl run can be traced back to the world.

Run-dir export (:func:`export_from_run`): the RL stage saves each stage's selection as
``<run_dir>/rl/stage_<k>/selection.json`` (``{"selected_ids": [...]}``); a
``selected.jsonl`` (one id, or ``{"id": ..}``, per line) is read too. The questions come
from ``<run_dir>/world/train.jsonl``. Each stage becomes its own parquet, as the
paper trains stage k on its own Pareto-selected file. A stage that fell back to every
sampled question (``on_empty=sampled``: the sampler chose none) is exported with
``extra_info.selection = "fallback_all_sampled"`` on every row (the only departure from
the reference schema, so such a file is never mistaken for a Pareto selection).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from etagent.records import MATH, QA, Example, read_jsonl
from etagent.utils.io import atomic_write_bytes, atomic_write_json, read_json

#: verl ``data_source`` of the built-in domains (the authors' names; the reward module maps them
#: back); another domain's rows use the domain's name.
DATA_SOURCES: dict[str, str] = {MATH: "math_effi_rl", QA: "qa_effi_rl"}
REWARD_STYLE = "rule"

_MESSAGE = pa.struct([("content", pa.string()), ("role", pa.string())])
#: Exactly the arrow schema of the reference parquet (pandas metadata aside).
VERL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(_MESSAGE)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.list_(pa.string())), ("style", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("index", pa.int64()),
                    ("need_tools_kwargs", pa.bool_()),
                    ("question", pa.string()),
                    ("split", pa.string()),
                ]
            ),
        ),
        ("metadata", pa.null()),
    ]
)

#: ``extra_info`` with the ``selection`` flag, used only for rows that no sampler chose
#: (``on_empty=sampled`` fallback), so a normal export keeps the reference schema exactly.
_INFO_FIELDS = [(f.name, f.type) for f in VERL_SCHEMA.field("extra_info").type]
FLAGGED_SCHEMA = VERL_SCHEMA.set(
    VERL_SCHEMA.get_field_index("extra_info"),
    pa.field("extra_info", pa.struct(_INFO_FIELDS + [("selection", pa.string())])),
)
FALLBACK = "fallback_all_sampled"

SELECTION_FILES = ("selection.json", "selected.jsonl")
_STAGE_RE = re.compile(r"^stage_(\d+)$")


# --------------------------------------------------------------------------- rows


def to_verl_row(
    example: Example,
    index: int,
    *,
    split: str = "train",
    data_source: str | None = None,
    system_prompt: str | None,
    need_tools_kwargs: bool = True,
    selection: str | None = None,
) -> dict[str, Any]:
    """One Example as a verl row (plain Python values in :data:`VERL_SCHEMA` layout);
    ``selection`` adds ``extra_info.selection`` (:data:`FLAGGED_SCHEMA`)."""
    if not example.answers:
        raise ValueError(f"export_verl: example {example.id!r} has no gold answer")
    messages = []
    if system_prompt:
        messages.append({"content": system_prompt, "role": "system"})
    messages.append({"content": example.question, "role": "user"})
    return {
        "data_source": data_source or DATA_SOURCES.get(example.domain, example.domain),
        "prompt": messages,
        "ability": example.domain,
        "reward_model": {"ground_truth": [str(a) for a in example.answers], "style": REWARD_STYLE},
        "extra_info": {
            "index": int(index),
            "need_tools_kwargs": bool(need_tools_kwargs),
            "question": example.question,
            "split": split,
            **({"selection": selection} if selection is not None else {}),
        },
        "metadata": None,
    }


def verl_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows -> an arrow table with exactly :data:`VERL_SCHEMA` (:data:`FLAGGED_SCHEMA` when
    the rows carry a ``selection`` flag; types are not inferred)."""
    rows = list(rows)
    flagged = any("selection" in (r.get("extra_info") or {}) for r in rows)
    return pa.Table.from_pylist(rows, schema=FLAGGED_SCHEMA if flagged else VERL_SCHEMA)


def export_verl(
    examples: Iterable[Example],
    path: str | Path,
    data_source: str | None = None,
    split: str = "train",
    *,
    system_prompt: str | None,
    start_index: int = 0,
    need_tools_kwargs: bool = True,
    write_ids: bool = True,
    selection: str | None = None,
) -> int:
    """Write ``examples`` as a verl parquet at ``path`` (atomically); returns the row count.

    ``extra_info.index`` runs from ``start_index``; the example ids go to
    ``<path>.ids.json`` (``write_ids``). ``selection`` (e.g. :data:`FALLBACK`) flags every
    row in ``extra_info.selection`` and in the ids file.
    """
    examples = list(examples)
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"export_verl: duplicate example id {dup!r}")
    rows = [
        to_verl_row(
            e,
            start_index + i,
            split=split,
            data_source=data_source,
            system_prompt=system_prompt,
            need_tools_kwargs=need_tools_kwargs,
            selection=selection,
        )
        for i, e in enumerate(examples)
    ]
    buf = io.BytesIO()
    pq.write_table(verl_table(rows), buf)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    if write_ids:
        atomic_write_json(ids_path(path), {"start_index": start_index, "ids": ids,
                                           **({"selection": selection} if selection else {})})
    return len(rows)


def ids_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".ids.json")


def read_verl(path: str | Path) -> list[Example]:
    """Examples from a verl parquet in this schema (e.g. the reference file).

    Ids come from the ``.ids.json`` sidecar when present, else ``<data_source>-<index>``;
    the domain is ``ability``.
    """
    path = Path(path)
    table = pq.read_table(path)
    missing = [f.name for f in VERL_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not a verl RL parquet; missing column(s) {missing}")
    sidecar = ids_path(path)
    ids = read_json(sidecar)["ids"] if sidecar.exists() else None
    out: list[Example] = []
    for n, row in enumerate(table.to_pylist()):
        where = f"{path}:row {n}"
        info = row.get("extra_info") or {}
        user = [m["content"] for m in row["prompt"] or [] if m.get("role") == "user"]
        question = info.get("question") or (user[-1] if user else None)
        if not question:
            raise ValueError(f"{where}: no question (extra_info.question or a user message)")
        try:
            out.append(
                Example(
                    id=ids[n] if ids is not None else f"{row['data_source']}-{info.get('index', n)}",
                    question=question,
                    answers=[str(a) for a in (row["reward_model"] or {}).get("ground_truth") or []],
                    domain=row["ability"],
                    source=row["data_source"],
                    split=info.get("split") or "train",
                    meta={"verl_index": info.get("index", n)},
                )
            )
        except (ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out


# --------------------------------------------------------------------------- run dir


def _selection_source(path: Path) -> str | None:
    """:data:`FALLBACK` when the stage trained on every sampled question because the sampler
    chose none (``on_empty=sampled``), else None."""
    if path.suffix != ".json":
        return None
    data = read_json(path)
    fallback = isinstance(data, dict) and (data.get("fallback_all_sampled") or data.get("selected_by") == FALLBACK)
    return FALLBACK if fallback else None


def _read_selection(path: Path) -> list[str]:
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("selected_ids"), list):
            raise ValueError(f"{path}: expected an object with a `selected_ids` list")
        return [str(i) for i in data["selected_ids"]]
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
            if isinstance(item, dict):
                item = item.get("id", item.get("example_id"))
            if not isinstance(item, (str, int)):
                raise ValueError(f"{path}:{lineno}: expected an id string or an object with `id`/`example_id`")
            out.append(str(item))
    return out


def find_selections(rl_dir: str | Path) -> dict[int, Path]:
    """``{stage number: selection file}`` under ``rl_dir`` (``stage_<k>/selection.json|selected.jsonl``)."""
    rl_dir = Path(rl_dir)
    found: dict[int, Path] = {}
    if not rl_dir.is_dir():
        return found
    for d in sorted(rl_dir.iterdir()):
        m = _STAGE_RE.match(d.name)
        if not (m and d.is_dir()):
            continue
        for name in SELECTION_FILES:
            if (d / name).is_file():
                found[int(m.group(1))] = d / name
                break
    return dict(sorted(found.items()))


def export_from_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    stage: int | None = None,
    examples_path: str | Path | None = None,
    rl_dir: str | Path | None = None,
    split: str = "train",
    system_prompt: str | None,
    data_source: str | None = None,
) -> dict[int, Path]:
    """Export the Pareto-selected questions a run saved; returns ``{stage: parquet path}``.

    ``stage=k`` writes stage k's selection to ``out``; ``stage=None`` writes every stage
    found to ``<out stem>_stage<k><suffix>``. Defaults: examples from
    ``<run_dir>/world/train.jsonl``, selections under ``<run_dir>/rl``.
    """
    run_dir = Path(run_dir)
    examples_path = Path(examples_path) if examples_path else run_dir / "world" / "train.jsonl"
    rl_dir = Path(rl_dir) if rl_dir else run_dir / "rl"
    if not examples_path.is_file():
        raise FileNotFoundError(f"export_from_run: training examples not found: {examples_path}")
    selections = find_selections(rl_dir)
    if not selections:
        raise FileNotFoundError(
            f"export_from_run: no stage_<k>/{' or '.join(SELECTION_FILES)} under {rl_dir} (has the rl stage run?)"
        )
    if stage is not None and stage not in selections:
        raise ValueError(f"export_from_run: stage {stage} not found under {rl_dir}; have {sorted(selections)}")
    by_id = {e.id: e for e in read_jsonl(examples_path, Example)}
    out = Path(out)
    written: dict[int, Path] = {}
    for k, sel_file in selections.items():
        if stage is not None and k != stage:
            continue
        ids = _read_selection(sel_file)
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"{sel_file}: {len(unknown)} id(s) not in {examples_path}, e.g. {unknown[0]!r}")
        target = out if stage is not None else out.with_name(f"{out.stem}_stage{k}{out.suffix or '.parquet'}")
        export_verl([by_id[i] for i in ids], target, data_source=data_source, split=split, system_prompt=system_prompt,
                    selection=_selection_source(sel_file))
        written[k] = target
    return written
