"""One notion of a *salient token*, shared by behaviour labels, the flywheel's redundancy rule
and its grounding check (so the "unused call" rule can never delete the call that produced
the answer while the grounding check thinks otherwise).

A salient token is

* a number, in canonical form: thousands separators dropped, trailing zeros of decimals
  dropped, a leading ``+`` dropped, ``-0`` is ``0`` (``1,234,567`` = ``1234567``,
  ``42.0`` = ``42``, ``-3.50`` = ``-3.5``); a ``-`` counts as a sign only when no digit
  stands right before it (``3-1`` is ``3`` and ``1``);
* or a word of 3+ letters, lower-cased, that is not a stop word (function words and the
  protocol's own vocabulary appear everywhere, so they never show that a result was used).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = r"(?<![\d.,])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_TOKEN_RE = re.compile(rf"(?P<num>{_NUMBER})|(?P<word>[^\W\d_]+)")

STOPWORDS = frozenset(
    """the and for are was were has have had with that this from which who whom what when where how
    its his her their our your yours not but all any can could would should will shall may might must
    does did done then than there here into onto out about over under also only just very more most
    some such each other one two let need now check answer result results python search print import
    return true false none compute calculate find know first next step use using get value number
    think they them been being after before while like much""".split()
)


def canonical_number(text: str) -> str | None:
    """Canonical string of a number token (see module docstring); None if not a number."""
    try:
        d = Decimal(text.replace(",", "").lstrip("+"))
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def salient_tokens(text: str | None) -> set[str]:
    """Canonical numbers and content words of ``text`` (see module docstring)."""
    out: set[str] = set()
    for m in _TOKEN_RE.finditer(text or ""):
        if m.group("num"):
            num = canonical_number(m.group("num"))
            if num is not None:
                out.add(num)
        else:
            w = m.group("word").lower()
            if len(w) >= 3 and w not in STOPWORDS:
                out.add(w)
    return out
