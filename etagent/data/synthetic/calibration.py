"""The mechanism world (``task=calibration``): a suite in which calling well is what counts.

The default world (:mod:`etagent.data.synthetic.suite`) cannot show calibration: a single call
is free under the efficiency metric, its zero-call questions are not reliably answerable
without a search, and its knowledge questions fail mostly by reading the wrong fact out of a
whole entity passage (experiments/mechanism/WORLD.md). This world changes three things:

* **Relation-keyed passages.** One passage per fact, ``"<subject> <key>: <value>."``
  (``"Zorvan Kell birthplace: Tavel."``), and a plan query is ``"<subject> <key>"``, so a
  top-1 search returns exactly the one fact asked for: a policy that makes the needed call
  copies the answer, one that skips it must guess.
* **Plans of 0 to 3 calls, each call decisive:**

  ====================  =====  ===================================================================
  type                  calls  question
  ====================  =====  ===================================================================
  ``qa_copy``           0      the answer (a name) is stated in the question
  ``qa_recall``         0      a fact of a *famous* entity (a small table that training repeats)
  ``math_tool``         1      arithmetic a tiny model cannot do in its head (python; numbers < 1000)
  ``qa_1hop``           1      one fact of a non-famous entity (search)
  ``qa_2hop``           2      a chain of two facts ("Where was the founder of Quorix Labs born?")
  ``qa_3hop``           3      a chain of three facts
  ``qa_calc``           2      a searched number, then arithmetic on it (search, python)
  ====================  =====  ===================================================================

* **No plan step is satisfied by accident:** a chain is redrawn when a step's value already
  shows in the question or in an earlier step's result (so the plan is minimal and the exact
  behaviour labels hold), and chains never pass through famous entities.

Cities have mayors (a person relation), so chains reach people and years, not only one of a
few countries; companies have a number of employees (< 1000, one token), what ``qa_calc`` computes on. Every name word is still unique to one entity (atomic tokens).
Generated per ``seed`` like the default suite; the default suite is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from etagent.behaviour import surfaces
from etagent.records import MATH, QA, PlanStep

from . import math_tasks
from .common import Candidate, RecallFact
from .knowledge_world import World, build_world
from .suite import SyntheticTask

# relation -> (subject kind, value kind, key word written in passages and queries)
RELATIONS: dict[str, tuple[str, str, str]] = {
    "birthplace": ("person", "city", "birthplace"),
    "birth_year": ("person", "year", "birth year"),
    "company": ("person", "company", "company"),  # founders only
    "headquarters": ("company", "city", "headquarters"),
    "founding_year": ("company", "year", "founding year"),
    "founder": ("company", "person", "founder"),
    "employees": ("company", "number", "employees"),
    "country": ("city", "country", "country"),
    "mayor": ("city", "person", "mayor"),
}

# one-hop questions ({e} = the subject); >= 5 paraphrases where the relation is memorised (qa_recall)
ONE_HOP: dict[str, tuple[str, ...]] = {
    "birthplace": ("Where was {e} born?", "In which city was {e} born?", "What is the birthplace of {e}?",
                   "Which city was {e} born in?", "Name the city where {e} was born."),
    "birth_year": ("In what year was {e} born?", "When was {e} born?", "What is the birth year of {e}?",
                   "Which year was {e} born in?", "Give the year {e} was born."),
    "company": ("Which company did {e} found?", "What company was founded by {e}?",
                "Name the company that {e} founded.", "What is the name of the company {e} founded?",
                "{e} founded which company?"),
    "headquarters": ("Where is {e} headquartered?", "In which city is {e} headquartered?",
                     "What city is {e} based in?", "Where are the headquarters of {e}?",
                     "Name the city where {e} has its headquarters."),
    "founding_year": ("In what year was {e} founded?", "When was {e} founded?", "What is the founding year of {e}?",
                      "Which year was {e} founded in?", "Give the year {e} was founded."),
    "founder": ("Who founded {e}?", "Who is the founder of {e}?", "Which person founded {e}?",
                "Name the founder of {e}.", "{e} was founded by whom?"),
    "employees": ("How many employees does {e} have?", "What is the number of employees of {e}?",
                  "How many people work at {e}?"),
    "country": ("In which country is {e}?", "Which country is {e} in?", "{e} is a city in which country?"),
    "mayor": ("Who is the mayor of {e}?", "Name the mayor of {e}.", "Which person is the mayor of {e}?"),
}
# entity-valued only: a memorised 4-digit year was the one recall error of the first seed (WORLD.md)
RECALL_RELATIONS = ("birthplace", "company", "headquarters", "founder")

# chains: the last relation asks the question about a noun phrase built from the earlier ones
FINAL: dict[str, tuple[str, ...]] = {
    "birthplace": ("Where was {x} born?", "In which city was {x} born?"),
    "birth_year": ("In what year was {x} born?", "What is the birth year of {x}?"),
    "headquarters": ("Where is {x} headquartered?", "In which city is {x} headquartered?"),
    "founding_year": ("In what year was {x} founded?", "What is the founding year of {x}?"),
    "employees": ("How many employees does {x} have?", "What is the number of employees of {x}?"),
    "country": ("In which country is {x}?", "Which country is {x} in?"),
    "mayor": ("Who is the mayor of {x}?", "Name the mayor of {x}."),
}
PHRASE: dict[str, str] = {  # the value of a relation, as a noun phrase about {x}
    "birthplace": "the birthplace of {x}",
    "company": "the company founded by {x}",
    "headquarters": "the city where {x} is headquartered",
    "founder": "the founder of {x}",
    "mayor": "the mayor of {x}",
}
TWO_HOP: tuple[tuple[str, ...], ...] = (
    ("birthplace", "country"), ("birthplace", "mayor"), ("company", "headquarters"), ("company", "founding_year"),
    ("company", "employees"),
    ("founder", "birthplace"), ("founder", "birth_year"), ("headquarters", "country"), ("headquarters", "mayor"),
    ("mayor", "birthplace"), ("mayor", "birth_year"),
)
THREE_HOP: tuple[tuple[str, ...], ...] = (
    ("founder", "birthplace", "country"), ("founder", "birthplace", "mayor"),
    ("company", "headquarters", "country"), ("company", "headquarters", "mayor"),
    ("headquarters", "mayor", "birth_year"), ("headquarters", "mayor", "birthplace"),
    ("birthplace", "mayor", "birth_year"), ("mayor", "birthplace", "country"),
)
# a searched number, then arithmetic on it: op -> (python operator, templates with {x} = the number's phrase)
CALC: dict[str, tuple[str, tuple[str, ...]]] = {
    "add": ("+", ("What is {x} plus {n}?", "Add {n} to {x}.")),
    "sub": ("-", ("What is {x} minus {n}?", "Subtract {n} from {x}.")),
}
CALC_PHRASE = "the number of employees of {e}"
# Every number of the arithmetic questions is below 1000, i.e. one token (the tokenizer cuts digits
# into chunks of 3): the first seeds copied multi-chunk operands and results wrongly in 40-80 % of
# the python questions (WORLD.md), which made a needed call far from decisive.
EMPLOYEES = (100, 500)  # a company's number of employees: [lo, hi)
# zero-call copy: a name stated in the question (name words are atomic tokens: a one- or two-token
# copy; a stated *number* was copied wrongly 3-13 % of the time by the first seeds, WORLD.md)
COPY: tuple[str, ...] = ("The answer is {n}. What is the answer?", "Remember the name {n}. Which name was it?",
                         "Repeat the name {n}.", "The secret name is {n}. What is the secret name?")
YEAR_PHRASE: dict[str, str] = {"birth_year": "the birth year of {e}", "founding_year": "the founding year of {e}"}

QTYPES: tuple[str, ...] = ("qa_copy", "qa_recall", "math_tool", "qa_1hop", "qa_2hop", "qa_3hop", "qa_calc")
DEFAULT_MIX: dict[str, float] = {"qa_copy": 0.10, "qa_recall": 0.08, "math_tool": 0.14, "qa_1hop": 0.30,
                                 "qa_2hop": 0.08, "qa_3hop": 0.16, "qa_calc": 0.14}
DEFAULT_WORLD: dict[str, Any] = {"n_people": 400, "n_famous": 4, "n_cities": 60, "n_countries": 12,
                                 "founder_share": 0.5}
SOURCES = {MATH: "calibration-math", QA: "calibration-qa"}
_VERSION = 4  # bump when generation changes, so stale files on disk are rewritten
_MAX_DRAWS = 100


def query(subject: str, relation: str) -> str:
    """The plan's search query for one fact: the subject and the relation's key word."""
    return f"{subject} {RELATIONS[relation][2]}"


@dataclass
class KeyedWorld:
    """The generated people, companies, cities and countries plus one mayor per city, with
    one passage per fact (relation-keyed)."""

    base: World
    mayors: dict[str, str]  # city -> person
    employees: dict[str, int]  # company -> number of employees

    def value(self, subject: str, relation: str) -> str:
        w = self.base
        if relation in ("birthplace", "birth_year", "company"):
            p = w.people[subject]
            if relation == "company":
                if p.company is None:
                    raise ValueError(f"{subject} founded no company")
                return p.company
            return p.born_city if relation == "birthplace" else str(p.born_year)
        if relation in ("headquarters", "founding_year", "founder"):
            c = w.companies[subject]
            return {"headquarters": c.hq_city, "founding_year": str(c.founded_year), "founder": c.founder}[relation]
        if relation == "employees":
            return str(self.employees[subject])
        if relation == "country":
            return w.cities[subject].country
        if relation == "mayor":
            return self.mayors[subject]
        raise KeyError(f"unknown relation {relation!r}")

    def passage(self, subject: str, relation: str) -> str:
        return f"{query(subject, relation)}: {self.value(subject, relation)}."

    def facts(self) -> list[tuple[str, str]]:
        """Every (subject, relation) with a value, in a fixed order."""
        out: list[tuple[str, str]] = []
        for name, p in self.base.people.items():
            out += [(name, "birthplace"), (name, "birth_year")] + ([(name, "company")] if p.company else [])
        out += [(c, r) for c in self.base.companies for r in ("headquarters", "founding_year", "founder", "employees")]
        out += [(c, r) for c in self.base.cities for r in ("country", "mayor")]
        return out

    def corpus_records(self) -> list[dict]:
        return [{"id": f"p{i:05d}", "title": s, "text": self.passage(s, r)} for i, (s, r) in enumerate(self.facts())]

    def name_words(self) -> list[str]:
        return self.base.name_words()

    def is_famous(self, name: str) -> bool:
        return self.base.is_famous(name)


def build_keyed_world(seed: int = 0, n_people: int = 400, n_famous: int = 4, n_cities: int = 60,
                      n_countries: int = 12, founder_share: float = 0.5) -> KeyedWorld:
    """The default world's generator (same names, facts and seed rule) plus a distinct
    non-famous mayor per city and a number of employees per company."""
    base = build_world(seed=seed, n_people=n_people, n_famous=n_famous, n_cities=n_cities,
                       n_countries=n_countries, founder_share=founder_share)
    pool = [p for p in base.people if not base.is_famous(p)]
    if len(pool) < n_cities:
        raise ValueError(f"world: need at least n_cities={n_cities} non-famous people to be mayors, have {len(pool)}")
    rng = random.Random(f"keyed:{seed}")
    mayors = dict(zip(base.cities, rng.sample(pool, n_cities)))
    employees = {c: rng.randrange(*EMPLOYEES) for c in base.companies}
    return KeyedWorld(base, mayors, employees)


class ChainQuestions:
    """Question generators bound to one keyed world (the non-famous part for searches)."""

    def __init__(self, world: KeyedWorld) -> None:
        self.world = world
        w = world.base
        self.pools: dict[str, list[str]] = {
            "person": [p for p in w.people if not w.is_famous(p)],
            "founder": [p for p in w.people if not w.is_famous(p) and w.people[p].company],
            "company": [c for c in w.companies if not w.is_famous(c)],
            "city": list(w.cities),
        }
        if not all(self.pools.values()):
            raise ValueError("world too small: need non-famous people, founders and companies")

    def _subjects(self, relation: str) -> list[str]:
        kind = RELATIONS[relation][0]
        return self.pools["founder" if relation == "company" else kind]

    def _famous(self, name: str) -> bool:
        return self.world.is_famous(name)

    def _walk(self, rng: random.Random, chain: tuple[str, ...]) -> tuple[str, list[PlanStep]] | None:
        """A start entity and its plan along ``chain``, or None when a step would be satisfied
        by accident or the chain passes a famous entity / a non-founder's company."""
        start = rng.choice(self._subjects(chain[0]))
        subject, steps, seen_texts = start, [], [start]
        for rel in chain:
            if rel == "company" and self.world.base.people.get(subject) is not None \
                    and self.world.base.people[subject].company is None:
                return None
            value = self.world.value(subject, rel)
            if self._famous(value) or any(surfaces(t, value) for t in seen_texts):
                return None
            steps.append(PlanStep("search", query(subject, rel), value))
            seen_texts.append(self.world.passage(subject, rel))
            subject = value
        return start, steps

    def _distractors(self, rng: random.Random, relation: str, gold: str, k: int = 3) -> list[str]:
        w = self.world.base
        kind = RELATIONS[relation][1]
        out: list[str] = []
        for _ in range(100):
            if kind in ("year", "number"):
                d = str(int(gold) + rng.choice([-1, 1]) * rng.randint(1, 30))
            else:
                d = rng.choice({"city": list(w.cities), "country": w.countries, "person": self.pools["person"],
                                "company": self.pools["company"]}[kind])
            if d != gold and d not in out:
                out.append(d)
            if len(out) == k:
                break
        return out

    def _chain(self, rng: random.Random, qtype: str, chains: tuple[tuple[str, ...], ...]) -> Candidate:
        chain = rng.choice(chains)
        for _ in range(_MAX_DRAWS):
            walked = self._walk(rng, chain)
            if walked is not None:
                break
        else:
            raise ValueError(f"task: no {qtype} chain {chain} without a coincidence in {_MAX_DRAWS} draws; "
                             "enlarge the world")
        start, steps = walked
        phrase = start
        for rel in chain[:-1]:
            phrase = PHRASE[rel].format(x=phrase)
        templates = FINAL[chain[-1]] if len(chain) > 1 else ONE_HOP[chain[-1]]
        question = rng.choice(templates).format(x=phrase, e=phrase)
        answer = steps[-1].expect
        meta = {"relation": "/".join(chain), "entities": [start] + [s.expect for s in steps[:-1]],
                "distractors": self._distractors(rng, chain[-1], answer)}
        return Candidate(qtype, QA, question, (answer,), tuple(steps), meta)

    def one_hop(self, rng: random.Random) -> Candidate:
        return self._chain(rng, "qa_1hop", tuple((r,) for r in ONE_HOP))

    def two_hop(self, rng: random.Random) -> Candidate:
        return self._chain(rng, "qa_2hop", TWO_HOP)

    def three_hop(self, rng: random.Random) -> Candidate:
        return self._chain(rng, "qa_3hop", THREE_HOP)

    def calc(self, rng: random.Random) -> Candidate:
        """Search a number, then compute on it: [search "<company> employees", python print(n <op> m)]."""
        entity = rng.choice(self._subjects("employees"))
        count = int(self.world.value(entity, "employees"))
        op = rng.choice(tuple(CALC))
        sym, templates = CALC[op]
        while True:  # the question must show neither the searched number nor the answer
            n = rng.randrange(100, 1000 - EMPLOYEES[1]) if op == "add" else rng.randrange(11, EMPLOYEES[0])
            value = count + n if op == "add" else count - n
            if n not in (count, value):
                break
        question = rng.choice(templates).format(x=CALC_PHRASE.format(e=entity), n=n)
        steps = (PlanStep("search", query(entity, "employees"), str(count)),
                 PlanStep("python", f"print({count}{sym}{n})", str(value)))
        return Candidate("qa_calc", MATH, question, (str(value),), steps,
                         {"op": op, "relation": "employees", "entities": [entity]})

    def copy(self, rng: random.Random) -> Candidate:
        """The answer is a name stated in the question (a non-famous person, company or city: asked
        to repeat a famous name, the first seed answered a fact it had memorised about it)."""
        w = self.world.base
        pool = [n for n in rng.choice((w.people, w.companies, w.cities)) if not w.is_famous(n)]
        name = rng.choice(pool)
        others = [n for n in rng.sample(pool, 4) if n != name][:3]
        return Candidate("qa_copy", QA, rng.choice(COPY).format(n=name), (name,), (),
                         {"relation": "copy", "entities": [name], "distractors": others})

    def recall_facts(self, seed: int) -> list[RecallFact]:
        """Facts of the famous people and their companies (plan = []): the memorised table."""
        w = self.world.base
        facts: list[RecallFact] = []
        for p in w.famous_people:
            assert p.company is not None  # famous people are founders by construction
            for relation in RECALL_RELATIONS:
                entity = p.name if RELATIONS[relation][0] == "person" else p.company
                answer = self.world.value(entity, relation)
                dis = self._distractors(random.Random(f"dis:{seed}:{entity}:{relation}"), relation, answer)

                def make(q: str, answer=answer, relation=relation, entity=entity, dis=dis) -> Candidate:
                    meta = {"relation": relation, "entities": [entity], "distractors": list(dis)}
                    return Candidate("qa_recall", QA, q, (answer,), (), meta)

                facts.append(RecallFact(f"{entity}:{relation}", tuple(t.format(e=entity) for t in ONE_HOP[relation]),
                                        make))
        return facts


def tool_question(rng: random.Random) -> Candidate:
    """``math_tool`` of this world: the default suite's operations and templates, every operand and
    result below 1000 (one token each), still beyond a tiny model's head arithmetic."""
    op = rng.choice(math_tasks.TOOL_OPS)
    if op == "mul":  # 2-digit x 1-digit
        a, b = rng.randrange(12, 100), rng.randrange(3, 10)
        while a * b >= 1000:
            a = rng.randrange(12, 100)
        return math_tasks._tool(rng.choice(math_tasks._MUL).format(a=a, b=b), f"{a}*{b}", a * b, op)
    if op == "add":  # 3-digit + 3-digit
        a, b = rng.randrange(100, 500), rng.randrange(100, 500)
        return math_tasks._tool(rng.choice(math_tasks._ADD).format(a=a, b=b), f"{a}+{b}", a + b, op)
    if op == "mod":  # 3-digit mod 2-digit
        a, b = rng.randrange(200, 1000), rng.randrange(7, 100)
        return math_tasks._tool(rng.choice(math_tasks._MOD).format(a=a, b=b), f"{a}%{b}", a % b, op)
    if op == "pow":  # squares and cubes below 1000
        b = rng.choice((2, 3))
        a = rng.randrange(11, 32) if b == 2 else rng.randrange(5, 10)
        return math_tasks._tool(rng.choice(math_tasks._POW).format(a=a, b=b), f"{a}**{b}", a**b, op)
    s, d, n = rng.randrange(1, 20), rng.randrange(2, 6), rng.randrange(5, 13)  # sums <= 570
    value = n * s + d * n * (n - 1) // 2
    return math_tasks._tool(rng.choice(math_tasks._SEQ).format(n=n, s=s, d=d), f"sum({s}+{d}*k for k in range({n}))",
                            value, op)


class CalibrationTask(SyntheticTask):
    """``task=calibration``: the mechanism world (module docstring). Same interface, split
    rules and files as :class:`SyntheticTask`; only the world, its passages and the question
    types differ."""

    qtypes = QTYPES
    default_mix = DEFAULT_MIX
    default_world = DEFAULT_WORLD
    sources = SOURCES

    def __init__(self, name: str = "calibration", seed: int = 0, n_train: int = 6000, n_dev: int = 200,
                 n_test: int = 300, mix: dict | None = None, world: dict | None = None, out_dir: str | None = None,
                 corpus_path: str | None = None, search_top_k: int = 1, *, domains: dict) -> None:
        if int(search_top_k) != 1:
            raise ValueError(f"task.search_top_k must be 1 for task=calibration (one passage per fact), got {search_top_k}")
        super().__init__(name=name, seed=seed, n_train=n_train, n_dev=n_dev, n_test=n_test, mix=mix, world=world,
                         out_dir=out_dir, corpus_path=corpus_path, search_top_k=search_top_k, domains=domains)
        self._keyed: KeyedWorld | None = None

    @property
    def keyed_world(self) -> KeyedWorld:
        if self._keyed is None:
            self._keyed = build_keyed_world(seed=self.seed, **self.world_cfg)
        return self._keyed

    @property
    def world(self) -> World:
        return self.keyed_world.base

    def corpus_records(self) -> list[dict]:
        return self.keyed_world.corpus_records()

    def fingerprint(self) -> str:
        spec = {"kind": "calibration", "v": _VERSION, "name": self.name, "seed": self.seed, "sizes": self.sizes,
                "mix": self.mix, "world": self.world_cfg}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def _sources(self) -> tuple[dict[str, list[RecallFact]], dict[str, Callable[[random.Random], Candidate]]]:
        cq = ChainQuestions(self.keyed_world)
        recall = {"qa_recall": cq.recall_facts(self.seed)}
        fresh: dict[str, Callable[[random.Random], Candidate]] = {
            "qa_copy": cq.copy, "math_tool": tool_question,
            "qa_1hop": cq.one_hop, "qa_2hop": cq.two_hop, "qa_3hop": cq.three_hop, "qa_calc": cq.calc}
        return recall, fresh
