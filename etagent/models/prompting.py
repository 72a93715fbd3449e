"""Prompt construction: one layout for SFT, RL, flywheel and evaluation.

The official ET-Agent SFT puts tool instructions in the user turn while RL/eval use a
system prompt; etagent uses the model's chat template with the configured system
prompt everywhere (the tiny model is trained without one to save tokens).
"""

from __future__ import annotations


def build_messages(question: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    return messages


def build_prompt_text(tokenizer, question: str, system_prompt: str | None = None) -> str:
    return tokenizer.apply_chat_template(
        build_messages(question, system_prompt), tokenize=False, add_generation_prompt=True
    )


def build_prompt_ids(tokenizer, question: str, system_prompt: str | None = None) -> list[int]:
    text = build_prompt_text(tokenizer, question, system_prompt)
    return list(tokenizer.encode(text, add_special_tokens=False))
