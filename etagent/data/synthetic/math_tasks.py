"""Math questions of the embedded suite: ones that need ``<python>`` and ones that do not.

* ``math_tool``: 2-3 digit products, 3-4 digit sums, ``a mod b`` with big ``a``, powers, sums
  of arithmetic sequences. Minimal plan = one python call printing the result; results
  range from 1 to 9 digits (a tiny model otherwise learns to copy a fixed length).
* ``math_recall``: single-digit products and sums (memorisable facts, 5 paraphrases).
* ``math_copy``: the answer is stated in the question ("The answer is 4821. ...").

The last two have an empty plan: a call there is redundant by construction.
Departure from the paper: competition math (AIME/AMC/MATH500) is replaced by arithmetic
whose tool need is unambiguous, so behaviour labels on it are exact.
"""

from __future__ import annotations

import random

from etagent.records import MATH, PlanStep

from .common import Candidate, RecallFact

_MUL = ("What is {a} * {b}?", "What is {a} times {b}?", "Compute {a} x {b}.", "Multiply {a} by {b}.",
        "What is the product of {a} and {b}?")
_ADD = ("What is {a} + {b}?", "What is {a} plus {b}?", "Compute {a} + {b}.", "Add {a} and {b}.",
        "What is the sum of {a} and {b}?")
_MOD = ("What is {a} mod {b}?", "What is the remainder when {a} is divided by {b}?", "Compute {a} modulo {b}.")
_POW = ("What is {a} to the power of {b}?", "What is {a}^{b}?", "Compute {a} raised to the power {b}.")
_SEQ = ("What is the sum of the first {n} terms of the arithmetic sequence that starts at {s} "
        "with common difference {d}?",
        "An arithmetic sequence starts at {s} and increases by {d}. What is the sum of its first {n} terms?")
_COPY = ("The answer is {n}. What is the answer?", "Remember the number {n}. What number was it?",
         "Repeat the number {n}.", "The secret number is {n}. What is the secret number?")

TOOL_OPS = ("mul", "add", "mod", "pow", "seq_sum")


def _num(rng: random.Random, digits: int) -> int:
    return rng.randrange(10 ** (digits - 1), 10**digits)


def _tool(question: str, code: str, value: int, op: str) -> Candidate:
    step = PlanStep(tool="python", query=f"print({code})", expect=str(value))
    return Candidate("math_tool", MATH, question, (str(value),), (step,), {"op": op})


def tool_question(rng: random.Random) -> Candidate:
    """One random tool-needing question (operation chosen uniformly)."""
    op = rng.choice(TOOL_OPS)
    # Operand sizes are kept small enough for a 2.5M model to copy reliably on a CPU budget,
    # and large enough that it cannot compute them in its head.
    if op == "mul":  # 2x2 .. 3x3 digits: 3..6-digit results
        a, b = _num(rng, rng.randint(2, 3)), _num(rng, rng.randint(2, 3))
        return _tool(rng.choice(_MUL).format(a=a, b=b), f"{a}*{b}", a * b, op)
    if op == "add":  # 3..4-digit sums
        a, b = _num(rng, rng.randint(3, 4)), _num(rng, rng.randint(3, 4))
        return _tool(rng.choice(_ADD).format(a=a, b=b), f"{a}+{b}", a + b, op)
    if op == "mod":  # 1..2-digit results
        a, b = _num(rng, rng.randint(4, 6)), rng.randrange(7, 100)
        return _tool(rng.choice(_MOD).format(a=a, b=b), f"{a}%{b}", a % b, op)
    if op == "pow":  # 4..7 digits
        a, b = rng.randrange(11, 60), rng.randint(3, 4)
        return _tool(rng.choice(_POW).format(a=a, b=b), f"{a}**{b}", a**b, op)
    s, d, n = rng.randrange(1, 50), rng.randrange(2, 10), rng.randrange(10, 31)
    value = n * s + d * n * (n - 1) // 2
    # the code only copies numbers from the question (no mental arithmetic such as s + d*n)
    return _tool(rng.choice(_SEQ).format(n=n, s=s, d=d), f"sum({s}+{d}*k for k in range({n}))", value, op)


def copy_question(rng: random.Random) -> Candidate:
    n = _num(rng, rng.randint(1, 5))
    return Candidate("math_copy", MATH, rng.choice(_COPY).format(n=n), (str(n),), (), {"op": "copy"})


def recall_facts(max_operand: int = 9) -> list[RecallFact]:
    """Products (operands 2..max_operand) and sums (1..max_operand), each with 5 paraphrases.

    ``max_operand`` sizes the table a model must memorise (9: the full single-digit table,
    145 facts; 5: 41 facts, each seen about 3.5x as often in training).
    """
    if not 2 <= max_operand <= 9:
        raise ValueError(f"task.recall_max_operand must be in 2..9, got {max_operand}")
    facts: list[RecallFact] = []
    for op, templates, lo, fn in (("mul", _MUL, 2, lambda a, b: a * b), ("add", _ADD, 1, lambda a, b: a + b)):
        for a in range(lo, max_operand + 1):
            for b in range(lo, max_operand + 1):
                value = fn(a, b)

                def make(q: str, value: int = value, op: str = op) -> Candidate:
                    return Candidate("math_recall", MATH, q, (str(value),), (), {"op": op})

                facts.append(RecallFact(f"{op}:{a}:{b}", tuple(t.format(a=a, b=b) for t in templates), make))
    return facts
