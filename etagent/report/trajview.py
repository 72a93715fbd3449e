"""Render one trajectory as HTML for a notebook: tool calls and their results highlighted.

The response text is split on the protocol tags (``<think>``, ``<python>``, ``<search>``,
``<result>``, ``<answer>``); each block gets its own colour, and the header lists the
question, gold answer, graded score, the calls with their status, and the behaviour labels.
Everything from the trajectory is HTML-escaped (model output is arbitrary text).
"""

from __future__ import annotations

import html
import re
from typing import Any, Mapping

TAGS = ("think", "python", "search", "result", "answer")
STYLE = {
    "think": "color:#555;font-style:italic",
    "python": "background:#e8f0fe;border-left:3px solid #1a73e8;padding:1px 4px",
    "search": "background:#fef7e0;border-left:3px solid #f9ab00;padding:1px 4px",
    "result": "background:#f1f3f4;color:#202124;border-left:3px solid #9aa0a6;padding:1px 4px",
    "answer": "background:#e6f4ea;border-left:3px solid #188038;padding:1px 4px;font-weight:bold",
    None: "color:#b00020",  # text outside any tag
}
_SPLIT = re.compile(r"(</?(?:%s)>)" % "|".join(TAGS))


def segments(text: str) -> list[tuple[str | None, str]]:
    """(tag or None, text) blocks in order; an unclosed tag runs to the end, a stray closer is text."""
    out: list[tuple[str | None, str]] = []
    open_tag: str | None = None
    for part in _SPLIT.split(text):
        if not part:
            continue
        m = re.fullmatch(r"<(/?)(\w+)>", part)
        if m and m.group(2) in TAGS:
            closing, tag = m.group(1) == "/", m.group(2)
            if not closing:
                open_tag = tag
                continue
            if closing and open_tag == tag:
                open_tag = None
                continue
        if out and out[-1][0] == open_tag:
            out[-1] = (open_tag, out[-1][1] + part)
        else:
            out.append((open_tag, part))
    return out


def _get(t: Any, key: str, default: Any = None) -> Any:
    return t.get(key, default) if isinstance(t, Mapping) else getattr(t, key, default)


def trajectory_html(traj: Any, question: str | None = None, gold: str | None = None, title: str = "") -> str:
    """HTML for a :class:`~etagent.records.Trajectory` (or its dict form)."""
    esc = html.escape
    calls = _get(traj, "tool_calls", []) or []
    beh = _get(traj, "behaviour", {}) or {}
    flags = [f for f in ("redundant", "insufficient", "aborted", "erroneous") if beh.get(f)]
    head = [f"<b>{esc(title)}</b>" if title else "",
            f"<div><b>Q:</b> {esc(str(question))}</div>" if question is not None else "",
            f"<div><b>gold:</b> {esc(str(gold))} &nbsp; <b>answer:</b> {esc(str(_get(traj, 'answer')))} "
            f"&nbsp; <b>score:</b> {float(_get(traj, 'score', _get(traj, 'correct', 0.0))):.2f} "
            f"&nbsp; <b>finish:</b> {esc(str(_get(traj, 'finish_reason', '')))}</div>",
            f"<div><b>calls:</b> {len(calls)} ("
            + ", ".join(esc(f"{_get(c, 'kind')}:{_get(c, 'status')}") for c in calls)
            + f") &nbsp; <b>behaviour:</b> {esc(', '.join(flags) or 'none')}</div>"]
    body = []
    for tag, text in segments(str(_get(traj, "response_text", ""))):
        if tag is None and not text.strip():
            continue  # newlines between blocks
        label = f"<span style='font-size:70%;color:#777'>{tag or 'untagged'}</span> " if tag != "think" else ""
        body.append(f"<div style='{STYLE.get(tag, STYLE[None])};margin:2px 0;white-space:pre-wrap'>"
                    f"{label}{esc(text)}</div>")
    return ("<div class='etagent-trajectory' style='font-family:monospace;font-size:12px;border:1px solid #ddd;"
            "padding:6px'>" + "".join(head) + "<hr style='margin:4px 0'>" + "".join(body) + "</div>")
