"""Format guide: keep a small local model on the profile's line structure while it writes the content.

SmolLM2-135M follows ``Domain: "..."`` once prefilled, but on the next line it drifts into prose: on the
demo abstracts 0 of 28 unguided candidates parsed as profiles, so no sample had two valid candidates to
compare. The guide is a logits processor that decides only *where lines begin and end*; every word is the
model's own choice:

- the domain is written in quotes: the opening quote is forced, the closing one may come after a few
  characters and is forced at a short domain's length (a 135M model otherwise lists topics until the token
  limit), and a blank line follows it;
- then ``Competencies:`` and the first ``-`` are forced;
- an item's text starts with a word; its name must reach its colon within a name's length; the item may
  end (with one newline) only once it has a ``Name: description`` shape, and ends at the first sentence end
  past a long description's length, or at the parser's limit in any case; a new line must start another item
  (``-``) or, after at least 3 items, end the answer;
- an item ends early, once it has its shape, when the tokens left are only enough for the items still
  needed (and the answer's end): a profile of three items beats one cut off in its second;
- after 8 items the answer ends, and so it does, after 3, when too few tokens are left to write another
  item (an item begun then would be cut off and the whole answer lost).

What it does not decide is what the parser still checks and what DPO should improve: whether the domain and
competencies are right, grounded, distinct, short enough, and whether the answer ends before
``max_new_tokens``. The guide works with greedy decoding and sampling; beam search reorders rows between
steps, which a per-row state cannot follow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

MIN_ITEMS = 3
MAX_ITEMS = 8
MIN_DOMAIN_CHARS = 3
MIN_DESCRIPTION_CHARS = 12
ITEM_RESERVE_TOKENS = 40  # a typical item is 20–40 tokens
MAX_NAME_CHARS = 60  # the parser allows 80; a name that has not closed by now never will
MAX_DOMAIN_CHARS = 80  # "a short domain description"; the parser allows 150
LONG_DESCRIPTION_CHARS = 160  # "one or two sentences": past this, the next sentence end ends the item
MAX_DESCRIPTION_CHARS = 300  # the parser allows 500; the end is forced here even mid-sentence
HEADER = "Competencies:\n-"

DOMAIN, FORCED, ITEM_START, ITEM, LINE_START, DONE = range(6)  # a row's phase
_WORD_START = re.compile(r"^ [A-Za-z(]")


@dataclass
class _Row:
    phase: int = DOMAIN
    line: str = ""
    items: int = 0
    forced: list[int] = field(default_factory=list)


class Vocabulary:
    """The token classes the guide needs, computed once per tokenizer (~1 s for a 49k vocabulary)."""

    def __init__(self, tokenizer: "PreTrainedTokenizerBase", eos_ids: list[int]):
        import torch

        size = len(tokenizer)
        texts = [tokenizer.decode([i]) for i in range(size)]
        special = set(tokenizer.all_special_ids)
        self.texts = texts
        self.size = size
        self.eos_ids = eos_ids
        self.single_newline = tokenizer.convert_tokens_to_ids("Ċ")
        self.blank_line = tokenizer.convert_tokens_to_ids("ĊĊ")
        self.dash = tokenizer.convert_tokens_to_ids("-")
        self.open_quote = tokenizer.encode(' "', add_special_tokens=False)
        self.close_quote = tokenizer.encode('"', add_special_tokens=False)
        self.header_ids = tokenizer.encode(HEADER, add_special_tokens=False)
        if tokenizer.decode([self.single_newline]) != "\n" or tokenizer.decode([self.blank_line]) != "\n\n":
            raise ValueError("the format guide needs a byte-level BPE tokenizer with '\\n' and '\\n\\n' tokens")
        if tokenizer.decode(self.header_ids) != HEADER or tokenizer.decode([self.dash]) != "-":
            raise ValueError("the format guide cannot spell the profile's header with this tokenizer")
        if len(self.open_quote) != 1 or len(self.close_quote) != 1:
            raise ValueError("the format guide needs single tokens for ' \"' and '\"'")
        # Inside a line no token may carry a newline (or be special): line ends are the guide's decision.
        inline = [bool(t) and "\n" not in t and "\r" not in t and i not in special for i, t in enumerate(texts)]
        self.inline = torch.tensor(inline)
        self.word_start = torch.tensor([ok and bool(_WORD_START.match(t)) for ok, t in zip(inline, texts)])
        self.colon = torch.tensor([ok and ":" in t for ok, t in zip(inline, texts)])
        # A quote may only close the domain (end the token): `"X", "Y"` would be two domains on one line.
        self.no_inner_quote = torch.tensor([ok and '"' not in t.rstrip('"') for ok, t in zip(inline, texts)])
        self.no_quote = torch.tensor([ok and '"' not in t for ok, t in zip(inline, texts)])
        self.banned_masks: dict[int, dict[tuple, torch.Tensor]] = {}  # filled by _Masks


class FormatGuide:
    """A transformers logits processor (``__call__(input_ids, scores)``) with one state per generated row."""

    def __init__(self, vocabulary: Vocabulary, prompt_length: int, max_new_tokens: int | None = None):
        self.vocab = vocabulary
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.rows: list[_Row] | None = None

    def __call__(self, input_ids: "torch.Tensor", scores: "torch.Tensor") -> "torch.Tensor":
        started = self.rows is not None and input_ids.shape[1] > self.prompt_length
        last = input_ids[:, -1].tolist() if started else None
        written = input_ids.shape[1] - self.prompt_length
        return self.apply(scores, last, None if self.max_new_tokens is None else self.max_new_tokens - written)

    def apply(self, scores: "torch.Tensor", last_tokens: list[int] | None, tokens_left: int | None) -> "torch.Tensor":
        """Advance every row by the token it just got (None on the first step), then mask ``scores`` in place.

        The entry point for a decoding loop that keeps no ``input_ids`` (training.ml.decoding).
        """
        if self.rows is None:
            self.rows = [_Row() for _ in range(scores.shape[0])]
        elif last_tokens is not None:
            for row, token in zip(self.rows, last_tokens):
                self._advance(row, token)
        masks = _Masks(self.vocab, scores.shape[-1])
        for index, row in enumerate(self.rows):
            if row.phase != DONE:
                scores[index].masked_fill_(masks.banned(self._allowed(row, tokens_left)), float("-inf"))
        return scores

    def keep_rows(self, indices: list[int]) -> None:
        """Keep only these rows, in this order: the decoding loop drops rows that have finished."""
        if self.rows is not None:
            self.rows = [self.rows[i] for i in indices]

    def _advance(self, row: _Row, token: int) -> None:
        if row.phase == DONE or token in self.vocab.eos_ids:
            row.phase = DONE
            return
        text = self.vocab.texts[token]
        if row.phase == FORCED:
            if not row.forced:
                row.phase = ITEM_START
        elif row.phase == DOMAIN and token == self.vocab.blank_line:
            row.phase, row.forced = FORCED, list(self.vocab.header_ids)
        elif row.phase in (ITEM_START, ITEM) and token == self.vocab.single_newline:
            row.items += 1
            row.phase, row.line = LINE_START, ""
        elif row.phase == LINE_START:
            row.phase = ITEM_START  # the forced-or-chosen "-" of the next item
        else:
            row.phase, row.line = (ITEM if row.phase in (ITEM_START, ITEM) else row.phase), row.line + text

    def _allowed(self, row: _Row, tokens_left: int | None) -> tuple:
        """The tokens this row may write next, as a key of :class:`_Masks` (a class name or token ids)."""
        vocab = self.vocab
        if row.phase == FORCED:
            return (row.forced.pop(0),) if row.forced else ("word_start",)
        if row.phase == ITEM_START:
            return ("word_start",)
        if row.phase == LINE_START:
            low = tokens_left is not None and tokens_left < ITEM_RESERVE_TOKENS
            if row.items >= MAX_ITEMS or (low and row.items >= MIN_ITEMS):
                return tuple(vocab.eos_ids)
            return (vocab.dash, *vocab.eos_ids) if row.items >= MIN_ITEMS else (vocab.dash,)
        if row.phase == DOMAIN:
            return self._domain(row.line.strip())
        name, has_colon, description = row.line.partition(":")
        if not has_colon:
            return ("colon",) if len(name) >= MAX_NAME_CHARS else ("inline",)
        description = description.strip()
        if not name.strip() or len(description) < MIN_DESCRIPTION_CHARS:
            return ("inline",)
        if _item_must_end(description, row.items, tokens_left):
            return (vocab.single_newline,)
        return ("inline", vocab.single_newline)

    def _domain(self, text: str) -> tuple:
        vocab = self.vocab
        if not text:
            return tuple(vocab.open_quote)
        if len(text) > 1 and text.endswith('"'):
            return (vocab.blank_line,)
        if len(text) >= MAX_DOMAIN_CHARS:
            return tuple(vocab.close_quote)
        # The closing quote may end a token ("no_inner_quote"), once the domain has a few characters.
        return ("no_inner_quote",) if len(text.strip('"')) >= MIN_DOMAIN_CHARS else ("no_quote",)


def _item_must_end(description: str, items: int, tokens_left: int | None) -> bool:
    """Whether an item that has its shape must end now: long enough, or the budget needs the rest."""
    if len(description) >= MAX_DESCRIPTION_CHARS:
        return True
    if len(description) >= LONG_DESCRIPTION_CHARS and description.endswith((".", "!", "?", ";")):
        return True
    if tokens_left is None:
        return False
    still_needed = max(0, MIN_ITEMS - items - 1)
    return tokens_left <= 2 + still_needed * ITEM_RESERVE_TOKENS


class _Masks:
    """The banned-token masks for one logits width, built once per key and kept on the vocabulary.

    Building a 49k-entry mask per row and step cost more than the model's own step once decoding was fast.
    """

    def __init__(self, vocabulary: Vocabulary, width: int):
        self.vocab = vocabulary
        self.width = width
        self.cache = vocabulary.banned_masks.setdefault(width, {})

    def banned(self, key: tuple) -> "torch.Tensor":
        mask = self.cache.get(key)
        if mask is None:
            mask = self.cache[key] = ~self._allowed(key)
        return mask

    def _allowed(self, key: tuple) -> "torch.Tensor":
        import torch

        vocab, width = self.vocab, self.width
        allowed = torch.zeros(width, dtype=torch.bool)
        for part in key:
            if isinstance(part, str):
                # The model's vocabulary may be padded beyond the tokenizer's: those ids are never allowed.
                token_class = getattr(vocab, part)[:width]
                allowed[: len(token_class)] |= token_class
            else:
                allowed[part] = True
        return allowed
