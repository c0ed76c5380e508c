"""Format guide: keep a small local model on the profile's line structure while it writes the content.

SmolLM2-135M follows ``Domain: "..."`` once prefilled, but on the next line it drifts into prose: on the
demo abstracts 0 of 28 unguided candidates parsed as profiles, so no sample had two valid candidates to
compare. The guide is a logits processor that decides only *where lines begin and end*; every word is the
model's own choice:

- the domain line may end only with a blank line, after at least a few characters, and must end once its
  closing quote is written;
- then ``Competencies:`` and the first ``-`` are forced;
- an item's text starts with a word; its name must reach its colon within a name's length; the item may
  end (with one newline) only once it has a ``Name: description`` shape; a new line must start another item (``-``) or, after at least 3 items, end the answer;
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
        self.header_ids = tokenizer.encode(HEADER, add_special_tokens=False)
        if tokenizer.decode([self.single_newline]) != "\n" or tokenizer.decode([self.blank_line]) != "\n\n":
            raise ValueError("the format guide needs a byte-level BPE tokenizer with '\\n' and '\\n\\n' tokens")
        if tokenizer.decode(self.header_ids) != HEADER or tokenizer.decode([self.dash]) != "-":
            raise ValueError("the format guide cannot spell the profile's header with this tokenizer")
        # Inside a line no token may carry a newline (or be special): line ends are the guide's decision.
        inline = [bool(t) and "\n" not in t and "\r" not in t and i not in special for i, t in enumerate(texts)]
        self.inline = torch.tensor(inline)
        self.word_start = torch.tensor([ok and bool(_WORD_START.match(t)) for ok, t in zip(inline, texts)])
        self.colon = torch.tensor([ok and ":" in t for ok, t in zip(inline, texts)])
        # A quote may only close the domain (end the token): `"X", "Y"` would be two domains on one line.
        self.no_inner_quote = torch.tensor([ok and '"' not in t.rstrip('"') for ok, t in zip(inline, texts)])


class FormatGuide:
    """A transformers logits processor (``__call__(input_ids, scores)``) with one state per generated row."""

    def __init__(self, vocabulary: Vocabulary, prompt_length: int, max_new_tokens: int | None = None):
        self.vocab = vocabulary
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.rows: list[_Row] | None = None

    def __call__(self, input_ids: "torch.Tensor", scores: "torch.Tensor") -> "torch.Tensor":
        if self.rows is None:
            self.rows = [_Row() for _ in range(input_ids.shape[0])]
        elif input_ids.shape[1] > self.prompt_length:
            for row, token in zip(self.rows, input_ids[:, -1].tolist()):
                self._advance(row, token)
        left = None if self.max_new_tokens is None else self.max_new_tokens - (input_ids.shape[1] - self.prompt_length)
        allowed = self._allowed_masks(scores.shape[-1], left)
        for index, row in enumerate(self.rows):
            if row.phase != DONE:
                scores[index].masked_fill_(~allowed(row), float("-inf"))
        return scores

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

    def _allowed_masks(self, width: int, tokens_left: int | None):
        import torch

        vocab = self.vocab
        pad = width - vocab.size  # the model's vocabulary may be padded beyond the tokenizer's

        def extend(mask: torch.Tensor) -> torch.Tensor:
            return torch.cat([mask, torch.zeros(pad, dtype=torch.bool)]) if pad > 0 else mask[:width]

        def only(*ids: int) -> torch.Tensor:
            mask = torch.zeros(width, dtype=torch.bool)
            mask[list(ids)] = True
            return mask

        inline, word_start = extend(vocab.inline), extend(vocab.word_start)
        colon, no_inner_quote = extend(vocab.colon), extend(vocab.no_inner_quote)

        def allowed(row: _Row) -> torch.Tensor:
            if row.phase == FORCED:
                return only(row.forced.pop(0)) if row.forced else word_start
            if row.phase == ITEM_START:
                return word_start
            if row.phase == LINE_START:
                low = tokens_left is not None and tokens_left < ITEM_RESERVE_TOKENS
                if row.items >= MAX_ITEMS or (low and row.items >= MIN_ITEMS):
                    return only(*vocab.eos_ids)
                return only(vocab.dash, *vocab.eos_ids) if row.items >= MIN_ITEMS else only(vocab.dash)
            if row.phase == DOMAIN:
                return _domain(row.line)
            name, has_colon, description = row.line.partition(":")
            if not has_colon:
                return colon if len(name) >= MAX_NAME_CHARS else inline
            complete = name.strip() and len(description.strip()) >= MIN_DESCRIPTION_CHARS
            return inline | only(vocab.single_newline) if complete else inline

        def _domain(line: str) -> torch.Tensor:
            text = line.strip()
            if text.startswith('"') and len(text) > 1 and text.endswith('"'):
                return only(vocab.blank_line)
            long_enough = len(text.strip('"')) >= MIN_DOMAIN_CHARS
            return no_inner_quote | only(vocab.blank_line) if long_enough else no_inner_quote

        return allowed
