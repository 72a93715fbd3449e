"""The embedded tokenizer: byte-level BPE trained locally, with one copy rule.

Built with the `tokenizers` library on the synthetic suite's own text and wrapped as a
transformers fast tokenizer, so every later stage loads it with
``AutoTokenizer.from_pretrained`` exactly like a hub checkpoint.

**The rule: whatever an agent copies from a question or a tool result into a call or an
answer is one token, or a few, and always the same ones wherever it appears.**
It gives three mechanisms:

* numbers are cut into chunks of at most ``digit_chunk`` (3) digits, left to right, before
  BPE (as in GPT-4's tokenizer), so ``906528`` is ``906|528`` in the question, the code,
  the result and the answer alike;
* words of the task's lexicon (``atomic_words``: on the embedded world, every word of an
  entity name) are atomic tokens matched as whole words, so ``Zorvan`` is one id whether
  a space, a tag or a parenthesis precedes it (plain BPE would give `` Zorvan`` after a
  space and ``Zorvan`` after ``<search>``: two unrelated ids for one name);
* protocol tags (``tag_tokens``: the run's grammar's, ``Grammar.tag_tokens``, so a configured
  tool's tags are atomic too) are atomic *non-special* added tokens: they survive ``decode`` (so
  parsing decoded ids works), make stop detection a single-token match, and split the text so a
  piece-wise encoding equals a whole-text one at every tag.

Measured on the seed agent (issue 12, README): one-digit-per-token numbers and 2-3 BPE
pieces per name left a 2.5M model unable to copy reliably on a 6-minute budget (13%
test correctness); with the rule it learns its teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOS, IM_START, IM_END)

# ChatML, the layout Qwen2.5 uses, so prompts look the same for the tiny and real models.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(texts: Iterable[str], *, tag_tokens: Sequence[str], vocab_size: int = 512,
                    min_frequency: int = 2, atomic_words: Iterable[str] = (),
                    digit_chunk: int = 3) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and return it as a fast HF tokenizer (rule: module doc).

    ``tag_tokens``: the run's protocol tags (``Grammar.tag_tokens``), added as atomic tokens.
    ``vocab_size`` counts the BPE vocabulary; tags, ``atomic_words`` and the digit chunks
    (10 + 100 + 1000 for ``digit_chunk=3``) are added on top.
    """
    if digit_chunk < 1:
        raise ValueError(f"tokenizer digit_chunk must be >= 1, got {digit_chunk}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rf"\d{{1,{int(digit_chunk)}}}"), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    words = sorted({w for w in atomic_words if w and w.strip() == w and " " not in w})
    # whole-word matches only: a name never fires inside a longer word
    tok.add_tokens([AddedToken(w, single_word=True, normalized=False, special=False) for w in words])
    # Every chunk of 1..digit_chunk digits is one id. Added tokens match leftmost-longest, which
    # is exactly the left-to-right chunking of the Split pre-tokenizer above (kept for texts
    # that reach BPE), so BPE's vocabulary budget never decides how a number is cut.
    chunks = [f"{i:0{k}d}" for k in range(1, digit_chunk + 1) for i in range(10**k)]
    tok.add_tokens([AddedToken(c, normalized=False, special=False) for c in chunks])
    # Tags: atomic, not "special", so skip_special_tokens never drops them.
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in tag_tokens])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "left"  # generation pads on the left
    return hf


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    tokenizer.save_pretrained(str(path))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end a response on their own (eos and ChatML end-of-turn)."""
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)
