"""Knowledge questions over the generated world: 0, 1 or 2 searches.

* ``qa_recall``: facts about famous people and their companies; plan = [] (memorised).
* ``qa_1hop``: one fact of a non-famous entity; plan = [search <entity name>].
* ``qa_2hop``: a chain whose second query is the first hop's answer, e.g. "In which city
  is the company founded by Zorvan Kell headquartered?" -> [search "Zorvan Kell" expect
  "Quorix Labs", search "Quorix Labs" expect "Tavel"].

Queries are the canonical entity name, so the minimal plan is unambiguous. Every
candidate carries ``meta.distractors``: wrong answers of the same type, which the
flawed teacher uses for guesses and wrong conclusions.
"""

from __future__ import annotations

import random
from typing import Callable

from etagent.records import QA, PlanStep

from .common import Candidate, RecallFact
from .knowledge_world import _OCCUPATIONS, World

# relation -> paraphrases ({e} = subject entity); >= 5 each for recall relations.
ONE_HOP: dict[str, tuple[str, ...]] = {
    "born_city": ("Where was {e} born?", "In which city was {e} born?", "What is the birthplace of {e}?",
                  "Which city was {e} born in?", "Name the city where {e} was born."),
    "born_year": ("In what year was {e} born?", "When was {e} born?", "What is the birth year of {e}?",
                  "Which year was {e} born in?", "Give the year {e} was born."),
    "founded": ("Which company did {e} found?", "What company was founded by {e}?",
                "Name the company that {e} founded.", "What is the name of the company {e} founded?",
                "{e} founded which company?"),
    "occupation": ("What is the occupation of {e}?", "What does {e} work as?", "What is the job of {e}?"),
    "hq_city": ("In which city is {e} headquartered?", "Where is {e} headquartered?",
                "What city is {e} based in?", "Where are the headquarters of {e}?",
                "Name the city where {e} has its headquarters."),
    "founded_year": ("In what year was {e} founded?", "When was {e} founded?",
                     "What is the founding year of {e}?", "Which year was {e} founded in?",
                     "Give the year {e} was founded."),
    "founder": ("Who founded {e}?", "Who is the founder of {e}?", "Which person founded {e}?",
                "Name the founder of {e}.", "{e} was founded by whom?"),
    "country": ("In which country is {e}?", "Which country is {e} in?", "{e} is a city in which country?"),
}
PERSON_RELATIONS = ("born_city", "born_year", "founded", "occupation")
COMPANY_RELATIONS = ("hq_city", "founded_year", "founder")
RECALL_RELATIONS = ("born_city", "born_year", "founded", "hq_city", "founded_year", "founder")

# chain -> (subject kind, first relation, second relation, paraphrases)
TWO_HOP: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "company_hq": ("person", "founded", "hq_city",
                   ("In which city is the company founded by {e} headquartered?",
                    "Where is the company that {e} founded headquartered?")),
    "company_year": ("person", "founded", "founded_year",
                     ("In what year was the company founded by {e} founded?",
                      "When was the company that {e} founded established?")),
    "founder_city": ("company", "founder", "born_city",
                     ("Where was the founder of {e} born?", "In which city was the founder of {e} born?")),
    "founder_year": ("company", "founder", "born_year",
                     ("In what year was the founder of {e} born?", "When was the founder of {e} born?")),
    "birth_country": ("person", "born_city", "country",
                      ("In which country was {e} born?", "In which country is the birthplace of {e}?")),
    "hq_country": ("company", "hq_city", "country",
                   ("In which country is {e} headquartered?", "In which country is the city where {e} is based?")),
}


class KnowledgeQuestions:
    """Question generators bound to one world."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.people = [p for p in world.people if not world.is_famous(p)]
        self.founders = [p for p in self.people if world.people[p].company]
        self.workers = [p for p in self.people if not world.people[p].company]
        self.companies = [c for c in world.companies if not world.is_famous(c)]
        if not (self.founders and self.workers and self.companies):
            raise ValueError("world too small: need non-famous founders, non-founders and companies")

    # ------------------------------------------------------------------ facts
    def fact(self, entity: str, relation: str) -> tuple[str, ...]:
        """Gold answers (canonical first) of ``relation`` of ``entity``."""
        w = self.world
        if relation in PERSON_RELATIONS:
            p = w.people[entity]
            if relation == "born_city":
                return (p.born_city,)
            if relation == "born_year":
                return (str(p.born_year),)
            if relation == "founded":
                if p.company is None:
                    raise ValueError(f"{entity} founded no company")
                return (p.company, w.companies[p.company].stem)
            return (p.occupation,)
        if relation in COMPANY_RELATIONS:
            c = w.companies[entity]
            return {"hq_city": (c.hq_city,), "founded_year": (str(c.founded_year),), "founder": (c.founder,)}[relation]
        if relation == "country":
            return (w.cities[entity].country,)
        raise KeyError(f"unknown relation {relation!r}")

    def distractors(self, rng: random.Random, relation: str, gold: str, k: int = 3) -> list[str]:
        """``k`` wrong answers of the same type as ``relation``'s answers."""
        w = self.world
        pools: dict[str, Callable[[], str]] = {
            "born_city": lambda: rng.choice(list(w.cities)),
            "hq_city": lambda: rng.choice(list(w.cities)),
            "country": lambda: rng.choice(w.countries),
            "founded": lambda: rng.choice(list(w.companies)),
            "founder": lambda: rng.choice(list(w.people)),
            "occupation": lambda: rng.choice(_OCCUPATIONS),
            "born_year": lambda: str(int(gold) + rng.choice([-1, 1]) * rng.randint(1, 30)),
            "founded_year": lambda: str(int(gold) + rng.choice([-1, 1]) * rng.randint(1, 30)),
        }
        out: list[str] = []
        for _ in range(100):
            d = pools[relation]()
            if d != gold and d not in out:
                out.append(d)
            if len(out) == k:
                break
        return out

    # ------------------------------------------------------------------ candidates
    def one_hop(self, rng: random.Random) -> Candidate:
        relation = rng.choice(tuple(ONE_HOP))
        pool = {"founded": self.founders, "occupation": self.workers, "country": list(self.world.cities)}.get(
            relation, self.companies if relation in COMPANY_RELATIONS else self.people)
        entity = rng.choice(pool)
        answers = self.fact(entity, relation)
        plan = (PlanStep("search", entity, answers[0]),)
        meta = {"relation": relation, "entities": [entity],
                "distractors": self.distractors(rng, relation, answers[0])}
        return Candidate("qa_1hop", QA, rng.choice(ONE_HOP[relation]).format(e=entity), answers, plan, meta)

    def two_hop(self, rng: random.Random) -> Candidate:
        chain = rng.choice(tuple(TWO_HOP))
        kind, rel1, rel2, templates = TWO_HOP[chain]
        pool = self.founders if rel1 == "founded" else (self.people if kind == "person" else self.companies)
        for _ in range(100):
            entity = rng.choice(pool)
            bridge = self.fact(entity, rel1)[0]
            answers = self.fact(bridge, rel2)
            # the first hop must not show the final answer by coincidence (e.g. born in the city
            # where the company is based), or one search would suffice and the plan is not minimal
            if answers[0] not in " ".join(self.world.passages(entity)):
                break
        plan = (PlanStep("search", entity, bridge), PlanStep("search", bridge, answers[0]))
        meta = {"relation": chain, "entities": [entity, bridge],
                "distractors": self.distractors(rng, rel2, answers[0])}
        return Candidate("qa_2hop", QA, rng.choice(templates).format(e=entity), answers, plan, meta)

    def recall_facts(self, seed: int) -> list[RecallFact]:
        """Facts about famous people and their companies (plan = [])."""
        facts: list[RecallFact] = []
        for p in self.world.famous_people:
            company = p.company
            assert company is not None  # famous people are founders by construction
            for relation in RECALL_RELATIONS:
                entity = p.name if relation in PERSON_RELATIONS else company
                answers = self.fact(entity, relation)
                # distractors are fixed per fact so all paraphrases agree
                dis = self.distractors(random.Random(f"dis:{seed}:{entity}:{relation}"), relation, answers[0])

                def make(q: str, answers=answers, relation=relation, entity=entity, dis=dis) -> Candidate:
                    meta = {"relation": relation, "entities": [entity], "distractors": list(dis)}
                    return Candidate("qa_recall", QA, q, answers, (), meta)

                facts.append(RecallFact(f"{entity}:{relation}",
                                        tuple(t.format(e=entity) for t in ONE_HOP[relation]), make))
        return facts
