"""One text format for tool turns: a teacher trajectory, re-tokenised, equals what the rollout
engine produces when the model writes the same turns and the tools return the same results.

The replay backend "samples" the teacher's own model text turn by turn, stopping at the first
stop string exactly as a real sampler does; the engine then injects the real tool results. Any
difference between the teacher's layout and the engine's (e.g. a newline between ``</python>``
and ``<result>``) makes the sequences differ, so the seed agent would be trained on sequences it
never meets at inference.
"""

from __future__ import annotations

import pytest

from etagent.backends.base import Completion, GenerationBackend, SamplingParams, find_stop
from etagent.data.synthetic import SyntheticTask
from etagent.models.prompting import build_prompt_ids
from etagent.models.tokenizer import build_tokenizer
from etagent.rollout.engine import RolloutEngine
from etagent.seed.teacher import write_teacher_trajectories
from etagent.train.sequences import end_token_id, from_text
from test_synthetic import make_toolset
from run_env import DOMAINS, GRADER, GRAMMAR

SMALL_WORLD = {"n_people": 40, "n_famous": 4, "n_cities": 10, "n_countries": 4}


@pytest.fixture(scope="module")
def task() -> SyntheticTask:
    return SyntheticTask(seed=0, n_train=120, n_dev=4, n_test=4, world=SMALL_WORLD, domains=DOMAINS)


@pytest.fixture(scope="module")
def toolset(task, tmp_path_factory):
    ts = make_toolset(task, tmp_path_factory.mktemp("world"))
    yield ts
    ts.close()


@pytest.fixture(scope="module")
def teacher(task, toolset):
    examples = task.load("train")
    rows = write_teacher_trajectories(examples, toolset, rates=None, seed=0)
    return examples, rows


@pytest.fixture(scope="module")
def tok(task, teacher):
    examples, rows = teacher
    texts = [r["response_text"] for r in rows] + [e.question for e in examples]
    texts += [r["text"] for r in task.corpus_records()]
    return build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=texts, vocab_size=400, atomic_words=task.lexicon())


class Replay(GenerationBackend):
    """Writes the teacher's model text of the current turn, cut at the first stop string."""

    def __init__(self, tokenizer, texts_by_question: dict[str, str]):
        self.tokenizer = tokenizer
        self.texts = texts_by_question

    def generate(self, prefixes, params: SamplingParams, **_):
        out = []
        for prefix in prefixes:
            text = self.tokenizer.decode(prefix, skip_special_tokens=False)
            question = next(q for q in self.texts if q in text)
            response = text.split("<|im_start|>assistant\n", 1)[1]
            rest = self.texts[question][len(response):]
            hit = find_stop(rest, params.stop)
            piece = rest[: hit[0]] if hit else rest
            ids = list(self.tokenizer.encode(piece, add_special_tokens=False))
            out.append([Completion(ids, [0.0] * len(ids), "stop" if hit else "eos", hit[1] if hit else None)])
        return out


def test_teacher_text_equals_what_the_engine_produces(task, toolset, teacher, tok):
    examples, rows = teacher
    by_id = {e.id: e for e in examples}
    # every call kind and flaw appears among the replayed trajectories
    picked = [r for r in rows if r["calls"]][:40]
    assert {c["kind"] for r in picked for c in r["calls"]} == {"python", "search"}
    assert {f for r in picked for f in r["flaws"]} >= {"redundant", "aborted"}
    exs = [by_id[r["example_id"]] for r in picked]
    backend = Replay(tok, {by_id[r["example_id"]].question: r["response_text"] for r in picked})
    engine = RolloutEngine(backend, toolset, GRADER, GRAMMAR, max_response_tokens=4096, max_turn_tokens=4096, label_behaviour=False, system_prompt=None)
    trajs = engine.rollout(exs, n=1, params=SamplingParams(temperature=0.0, max_new_tokens=4096))
    for row, ex, traj in zip(picked, exs, trajs):
        seq = from_text(tok, build_prompt_ids(tok, ex.question, None), row["response_text"], grammar=GRAMMAR)
        n_prompt = len(traj.prompt_ids)
        # SFT appends the end-of-turn token the sampler never returns (it stops at </answer>)
        assert seq.ids[-1] == end_token_id(tok)
        ids, mask = seq.ids[:-1], seq.mask[:-1]
        assert ids[:n_prompt] == traj.prompt_ids
        assert traj.response_text == row["response_text"], row["id"]
        assert ids[n_prompt:] == traj.response_ids, row["id"]
        assert mask[n_prompt:] == traj.response_mask, row["id"]
        # piece-wise encoding (what training uses) equals encoding the whole text at once
        assert list(tok.encode(row["response_text"], add_special_tokens=False)) == traj.response_ids


def test_tool_turn_is_call_then_result_with_nothing_between():
    text = GRAMMAR.format_tool_turn("python", "print(1)", "1")
    assert text == "<python>print(1)</python><result>\n1\n</result>"
    assert GRAMMAR.parse(text + "<answer>\\boxed{1}</answer>").call_counts()["python"] == 1
