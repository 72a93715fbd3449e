"""task=jsonl: the user's own question files (train/dev/test, field names, per-row domain, corpus,
seed demonstrations) through the whole pipeline with the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED
from etagent.data.jsonl_task import JsonlTask, UserTrajectories, load_corpus_rows
from run_env import DOMAINS, GRADER, unused_toolset

PEOPLE = [("Arlo Venn", "Quarth", 1961), ("Bea Torlis", "Mindle", 1974), ("Cyr Halgo", "Pesk", 1958),
          ("Dova Strenn", "Quarth", 1980), ("Elm Parro", "Vosk", 1969), ("Fen Oradi", "Mindle", 1990),
          ("Gil Samsa", "Pesk", 1947), ("Hale Irwo", "Vosk", 1983), ("Ivo Brask", "Tull", 1975),
          ("Jun Kadel", "Tull", 1966)]


def user_files(root: Path) -> dict[str, Path]:
    """A 40-row user dataset: 30 training rows, 10 test rows; half math, half QA over a corpus.
    Field names differ from the defaults (`prompt`, `gold`, `kind`, `uid`)."""
    rows = []
    for i in range(20):
        a, b = 13 + 7 * i, 21 + 3 * i
        rows.append({"uid": f"m{i}", "prompt": f"What is {a} * {b}?", "gold": a * b, "kind": "math"})
    for i, (name, city, year) in enumerate(PEOPLE):
        rows.append({"uid": f"b{i}", "prompt": f"In which city was {name} born?", "gold": city, "kind": "qa"})
        rows.append({"uid": f"y{i}", "prompt": f"In what year was {name} born?", "gold": [str(year)], "kind": "qa"})
    train = [r for k, r in enumerate(rows) if k % 4 != 3]
    test = [r for k, r in enumerate(rows) if k % 4 == 3]
    assert (len(train), len(test)) == (30, 10)
    corpus = [{"title": n, "text": f"{n} was born in {c} in {y}."} for n, c, y in PEOPLE]
    corpus += [{"contents": f"{c}\n{c} is a city."} for c in sorted({c for _, c, _ in PEOPLE})]
    demos = []
    for r in train[:12]:
        if r["kind"] == "math":
            expr = r["prompt"][8:-1].replace(" ", "")
            text = (f"<think>I will compute this with Python.</think>\n<python>print({expr})</python>\n"
                    f"<result>\n{r['gold']}\n</result>\n<answer>The answer is \\boxed{{{r['gold']}}}</answer>")
        else:
            name = r["prompt"].split(" was ")[1].split(" born")[0]
            n, c, y = next(p for p in PEOPLE if p[0] == name)
            gold = r["gold"][0] if isinstance(r["gold"], list) else r["gold"]
            text = (f"<think>I need to search for {name}.</think>\n<search>{name}</search>\n"
                    f"<result>\n{n} was born in {c} in {y}.\n</result>\n<answer>The answer is \\boxed{{{gold}}}</answer>")
        demos.append({"id": r["uid"], "response_text": text})
    out = {}
    for key, data in (("train", train), ("test", test), ("corpus", corpus), ("demos", demos)):
        out[key] = root / f"{key}.jsonl"
        out[key].write_text("".join(json.dumps(x) + "\n" for x in data))
    return out


FIELDS = dict(question_fields=["prompt"], answer_field="gold", id_field="uid", domain=None, domain_field="kind")


def test_splits_fields_domains_and_the_dev_split(tmp_path: Path):
    f = user_files(tmp_path)
    task = JsonlTask(train_path=str(f["train"]), test_path=str(f["test"]), name="mine", **FIELDS, domains=DOMAINS)
    train, dev, test = task.load("train"), task.load("dev"), task.load("test")
    assert (len(train), len(dev), len(test)) == (27, 3, 10)  # dev_fraction 0.1 of 30 split off
    assert not {e.id for e in train} & {e.id for e in dev}
    ex = next(e for e in train + dev if e.meta["row_id"] == "m0")
    assert ex.question == "What is 13 * 21?" and ex.answers == ["273"] and ex.domain == "math"
    assert ex.meta["metric"] == "math" and ex.source == "mine" and "kind" not in ex.meta
    qa = next(e for e in test if e.domain == "qa")
    assert qa.meta["metric"] == "f1" and all(e.split == "dev" for e in dev)
    again = JsonlTask(train_path=str(f["train"]), test_path=str(f["test"]), name="mine", **FIELDS, domains=DOMAINS)
    assert [e.id for e in again.load("dev")] == [e.id for e in dev]  # seeded: the same split every time
    capped = JsonlTask(train_path=str(f["train"]), test_path=str(f["test"]), n_test=4, **FIELDS, domains=DOMAINS)
    assert len(capped.load("test")) == 4
    written = task.write(str(tmp_path / "world"))
    assert set(written) == {"train", "dev", "test"}  # no corpus configured: none written
    assert sum(1 for _ in open(written["dev"])) == 3


def test_bad_input_names_the_file_line_and_key(tmp_path: Path):
    f = user_files(tmp_path)
    with pytest.raises(ValueError, match="task.train_path: required"):
        JsonlTask(test_path=str(f["test"]), domains=DOMAINS)
    with pytest.raises(FileNotFoundError, match="task.corpus_path: no such file"):
        JsonlTask(train_path=str(f["train"]), test_path=str(f["test"]), corpus_path=str(tmp_path / "nope"), domains=DOMAINS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"uid": 1, "prompt": "q1", "gold": 1, "kind": "math"}\n'
                   '{"uid": 2, "prompt": "q2", "gold": 2, "kind": "chemistry"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: task.domain_field 'kind': domain must be one of \['math', 'qa'\]"):
        JsonlTask(train_path=str(bad), test_path=str(f["test"]), **FIELDS, domains=DOMAINS).load("train")
    bad.write_text('{"question": "q1"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing key 'answer'"):
        JsonlTask(train_path=str(bad), test_path=str(f["test"]), domains=DOMAINS).load("train")
    with pytest.raises(ValueError, match=r"train.jsonl:1: missing question.*set task.question_fields"):
        JsonlTask(train_path=str(f["train"]), test_path=str(f["test"]), domains=DOMAINS).load("train")  # default field names
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl:2: no non-empty `text`"):
        load_corpus_rows(corpus)


def test_user_trajectories_match_rows_and_are_graded(tmp_path: Path):
    f = user_files(tmp_path)
    task = JsonlTask(train_path=str(f["train"]), test_path=str(f["test"]), trajectories_path=str(f["demos"]), **FIELDS, domains=DOMAINS)
    train, dev = task.load("train"), task.load("dev")
    rows = task.seed_agent(GRADER).write(train, unused_toolset())
    demo_ids = {json.loads(x)["id"] for x in f["demos"].read_text().splitlines()}
    in_dev = sum(e.meta["row_id"] in demo_ids for e in dev)
    assert len(rows) == 12 - in_dev and all(r["correct"] for r in rows)  # dev rows' demos are not trained on
    assert not {r["example_id"] for r in rows} & {e.id for e in dev}
    m = next(r for r in rows if r["domain"] == "math")
    assert m["calls"] == [{"kind": "python", "query": m["calls"][0]["query"], "role": "unlabelled", "status": "unknown"}]
    assert m["calls"][0]["query"].startswith("print(")
    assert UserTrajectories(None, GRADER).write(train, unused_toolset()) == []
    other = tmp_path / "other.jsonl"
    other.write_text('{"question": "What is 1 + 1?", "response_text": "<answer>\\\\boxed{2}</answer>"}\n')
    with pytest.raises(ValueError, match=r"other.jsonl:1: matches no training row"):
        UserTrajectories(str(other), GRADER).write(train, unused_toolset())


def _run(tmp_path: Path, name: str, extra: list[str]) -> subprocess.CompletedProcess:
    f = user_files(tmp_path)
    args = [sys.executable, "-m", "etagent", "preset=smoke", "task=jsonl", f"paths.shared_dir={SHARED}",
            f"task.train_path={f['train']}", f"task.test_path={f['test']}", f"task.corpus_path={f['corpus']}",
            "task.question_fields=[prompt]", "task.answer_field=gold", "task.id_field=uid", "task.domain=null",
            "task.domain_field=kind", "task.name=mine", f"hydra.run.dir={tmp_path / name}", *extra]
    env = {**os.environ, "ETAGENT_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~3 min on an idle 2-core machine; far more while other jobs run
def test_whole_pipeline_on_a_40_row_user_file(tmp_path: Path):
    demos = user_files(tmp_path)["demos"]
    r = _run(tmp_path, "run", [f"task.trajectories_path={demos}"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    run = tmp_path / "run"
    for stage in ("world", "seed", "flywheel", "ase", "rl", "eval", "report"):
        assert (run / stage / ".done.json").exists(), stage
    world = json.loads((run / "world" / ".done.json").read_text())["summary"]
    assert (world["n_train"], world["n_dev"], world["n_test"]) == (27, 3, 10)
    assert (run / "world" / "corpus.jsonl").exists() and (run / "world" / "tokenizer").is_dir()
    seed = json.loads((run / "seed" / ".done.json").read_text())["summary"]
    assert 0 < seed["sequences"] <= 12  # SFT on the user's demonstrations
    import pandas as pd

    res = pd.read_parquet(run / "results.parquet")
    for policy in ("seed", "ase", "rl_stage_1", "rl_stage_2"):
        m = json.loads((run / "eval" / policy / "metrics.json").read_text())
        assert m["n_examples"] == 10 and set(m["by_domain"]) == {"math", "qa"}
        row = res[(res.policy == policy) & (res.domain == "all") & (res.metric == "correctness")].iloc[0]
        assert row.n == 10 and row.value == pytest.approx(m["overall"]["correctness"])
    assert set(res.benchmark) == {"mine"}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_without_trajectories_the_seed_is_the_base_model(tmp_path: Path):
    r = _run(tmp_path, "run", ["stages=[world,seed]"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    run = tmp_path / "run"
    seed = json.loads((run / "seed" / ".done.json").read_text())["summary"]
    assert seed["sequences"] == 0 and seed["seed"].startswith("base model")
    assert (run / "seed" / "final" / "model.safetensors").read_bytes() == \
        (run / "world" / "model_init" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("explicit", [False, True])
def test_an_explicit_search_corpus_is_not_replaced_by_the_worlds(tmp_path: Path, monkeypatch, explicit: bool):
    from conftest import compose

    import etagent.tools
    from etagent.pipeline import components
    from etagent.pipeline.context import RunContext

    world = tmp_path / "run" / "world"
    world.mkdir(parents=True)
    (world / "corpus.jsonl").write_text('{"id": "0", "title": "t", "text": "world"}\n')
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"id": "0", "title": "t", "text": "mine"}\n')
    cfg = compose(["task=synthetic", *([f"tools.search.corpus_path={mine}"] if explicit else [])],
                  run_dir=tmp_path / "run")
    seen = {}
    monkeypatch.setattr(etagent.tools, "build_toolset", lambda node: seen.setdefault("path", node.search.corpus_path))
    components.make_toolset(RunContext(cfg=cfg, run_dir=tmp_path / "run", tracker=None))
    assert Path(seen["path"]) == (mine if explicit else world / "corpus.jsonl")
