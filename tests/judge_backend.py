"""A judge backend that config can name (``judge.backend={_target_: judge_backend.ScriptedJudge}``):
every vote replies ``Verdict: <verdict>``; instances are kept so a test can read the prompts."""

from __future__ import annotations

from test_judge import FakeBackend


class ScriptedJudge(FakeBackend):
    instances: list["ScriptedJudge"] = []

    def __init__(self, verdict: str = "yes"):
        super().__init__(lambda text, k: f"Verdict: {verdict}")
        ScriptedJudge.instances.append(self)
