"""How much of a profile is copied verbatim from its abstracts: the reward-hacking check of every evaluation.

One definition, used everywhere (the evaluation page, bench/round.py): the share of the profile's words that
lie inside a run of at least ``COPY_SPAN_WORDS`` consecutive words found, in the same order, in one of the
sample's abstracts (its title and text). Words are lower-cased ``\\w+`` runs, so punctuation, case and line
breaks do not hide a copy. A span is looked for within one abstract, never across two.

Eight words: a technical term or a title fragment ("deep reinforcement learning for robot control") is rarely
that long, while a copied sentence nearly always is; shorter spans count legitimate naming as copying.

Nothing here imports Django.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

COPY_SPAN_WORDS = 8
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def source_spans(sources: Iterable[str], span: int = COPY_SPAN_WORDS) -> set[tuple[str, ...]]:
    """Every run of ``span`` consecutive words of each source text (the abstracts), each text on its own."""
    found: set[tuple[str, ...]] = set()
    for text in sources:
        tokens = words(text)
        found.update(tuple(tokens[i:i + span]) for i in range(len(tokens) - span + 1))
    return found


def copied_words(profile: str, spans: set[tuple[str, ...]], span: int = COPY_SPAN_WORDS) -> tuple[int, int]:
    """(words inside a copied span, words) of ``profile``.

    Any run of ≥ ``span`` copied words is covered by its windows of exactly ``span`` words, so marking every
    window found in the sources marks exactly the words of the copied runs.
    """
    tokens = words(profile)
    covered = [False] * len(tokens)
    for i in range(len(tokens) - span + 1):
        if tuple(tokens[i:i + span]) in spans:
            covered[i:i + span] = [True] * span
    return sum(covered), len(tokens)


def copy_share(profile: str, sources: Sequence[str], span: int = COPY_SPAN_WORDS) -> float | None:
    """Share of the profile's words copied from ``sources`` in runs of ≥ ``span`` words; None for no words."""
    copied, total = copied_words(profile, source_spans(sources, span), span)
    return copied / total if total else None
