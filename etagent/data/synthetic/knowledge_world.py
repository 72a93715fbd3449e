"""A generated world of fictional people, companies, cities and countries, plus its passages.

The knowledge domain of the embedded task suite. Every name is built from random
syllables and every name *token* is used by exactly one entity, so a search for an
entity's canonical name ("Zorvan Kell", "Quorix Labs", "Tavel") ranks that entity's
passage first under BM25 (its passage repeats the name; other passages mention it at
most once). Passages stay short (< 130 chars) so a truncated search result (~256 chars)
still shows every fact of the top hit.

Departure from the paper: the paper searches Wikipedia for real multi-hop questions
(2Wiki, HotpotQA, MuSiQue, Bamboogle); here the facts are invented, so nothing can be
known without the corpus except the "famous" entities that training repeats.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "qu", "th", "sh", "j")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "x", "th", "m")
# Company-name suffixes are shared tokens; the unique stem carries the match.
_COMPANY_SUFFIXES = ("Labs", "Works", "Group", "Foods", "Motors", "Media", "Tech", "Bank")
PASSAGE_STYLES = ("fact", "entity")
_OCCUPATIONS = ("painter", "engineer", "teacher", "pilot", "chemist", "writer", "architect", "farmer", "singer", "doctor")
# Name tokens must never collide with words of the question/passage templates.
_RESERVED = frozenset(
    "a an and as at born by city company country for founded founder in is it of the was who what where which "
    "year works labs group foods motors media tech bank name about people lives headquartered".split()
)


@dataclass
class Person:
    name: str
    born_city: str
    born_year: int
    company: str | None = None  # the company this person founded, if any
    occupation: str = ""
    famous: bool = False


@dataclass
class Company:
    name: str
    stem: str  # the unique token of the name (an accepted short answer)
    hq_city: str
    founded_year: int
    founder: str


@dataclass
class City:
    name: str
    country: str


@dataclass
class World:
    people: dict[str, Person] = field(default_factory=dict)
    companies: dict[str, Company] = field(default_factory=dict)
    cities: dict[str, City] = field(default_factory=dict)
    countries: list[str] = field(default_factory=list)
    passage_style: str = "fact"  # fact: one passage per fact | entity: one passage per entity

    # ------------------------------------------------------------------ passages
    def passages(self, title: str) -> list[str]:
        """Passages about entity ``title``: one fact each (``fact`` style, the name first in
        each), or all facts in one passage (``entity`` style, for a top-1 search tool)."""
        if title in self.people:
            p = self.people[title]
            article = "an" if p.occupation[0] in "aeiou" else "a"
            second = f"{p.name} founded {p.company}." if p.company else f"{p.name} works as {article} {p.occupation}."
            facts = [f"{p.name} was born in {p.born_city} in {p.born_year}.", second]
        elif title in self.companies:
            c = self.companies[title]
            facts = [f"{c.name} is headquartered in {c.hq_city}.", f"{c.name} was founded in {c.founded_year}.",
                     f"{c.name} was founded by {c.founder}."]
        elif title in self.cities:
            c = self.cities[title]
            facts = [f"{c.name} is a city in {c.country}."]
        else:
            raise KeyError(f"unknown entity {title!r}")
        return facts if self.passage_style == "fact" else [" ".join(facts)]

    def corpus_records(self) -> list[dict]:
        """JSONL-ready passages ``{id, title, text}`` in a fixed order (several per entity)."""
        titles = list(self.people) + list(self.companies) + list(self.cities)
        texts = [(t, x) for t in titles for x in self.passages(t)]
        return [{"id": f"p{i:05d}", "title": t, "text": x} for i, (t, x) in enumerate(texts)]

    def name_words(self) -> list[str]:
        """Every word of every entity name, sorted (company suffixes such as ``Labs`` included)."""
        names = list(self.people) + list(self.companies) + list(self.cities) + list(self.countries)
        return sorted({w for n in names for w in n.split()})

    @property
    def famous_people(self) -> list[Person]:
        return [p for p in self.people.values() if p.famous]

    def is_famous(self, name: str) -> bool:
        """True for famous people and the companies they founded (known without search)."""
        if name in self.people:
            return self.people[name].famous
        if name in self.companies:
            return self.people[self.companies[name].founder].famous
        return False


class _NameMaker:
    """Unique capitalised pseudo-words; no token is ever handed out twice."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, min_syl: int = 2, max_syl: int = 2) -> str:
        for _ in range(10_000):
            n = self.rng.randint(min_syl, max_syl)
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n))
            w += self.rng.choice(_CODAS)
            if 4 <= len(w) <= 7 and w not in self.used and w not in _RESERVED:
                self.used.add(w)
                return w.capitalize()
        raise RuntimeError("name space exhausted: reduce world sizes")


def build_world(
    seed: int = 0,
    n_people: int = 400,
    n_famous: int = 8,
    n_cities: int = 40,
    n_countries: int = 8,
    founder_share: float = 0.5,
    passage_style: str = "fact",
) -> World:
    """Generate the world deterministically from ``seed``.

    The first ``n_famous`` people are founders and "famous": questions about them (and
    their companies) need no search because training repeats them.
    """
    if not (0 < n_famous <= n_people):
        raise ValueError(f"world: need 0 < n_famous <= n_people, got n_famous={n_famous}, n_people={n_people}")
    if n_cities < 2 or n_countries < 2:
        raise ValueError("world: need at least 2 cities and 2 countries (distractors)")
    if not 0.0 <= founder_share <= 1.0:
        raise ValueError(f"world: founder_share must be in [0, 1], got {founder_share}")
    if passage_style not in PASSAGE_STYLES:
        raise ValueError(f"world: passage_style must be one of {PASSAGE_STYLES}, got {passage_style!r}")
    rng = random.Random(f"world:{seed}")
    names = _NameMaker(rng)
    world = World(passage_style=passage_style)
    world.countries = [names.word(2, 3) for _ in range(n_countries)]
    for _ in range(n_cities):
        c = City(names.word(2, 2), rng.choice(world.countries))
        world.cities[c.name] = c
    city_names = list(world.cities)
    n_founders = max(n_famous, round(founder_share * n_people))
    for i in range(n_people):
        name = f"{names.word(2, 2)} {names.word(1, 2)}"
        p = Person(name, rng.choice(city_names), rng.randrange(1900, 2000),
                   occupation=rng.choice(_OCCUPATIONS), famous=i < n_famous)
        if i < n_founders:
            stem = names.word(2, 2)
            comp = Company(f"{stem} {rng.choice(_COMPANY_SUFFIXES)}", stem, rng.choice(city_names),
                           rng.randrange(1950, 2021), name)
            p.company = comp.name
            world.companies[comp.name] = comp
        world.people[name] = p
    return world
