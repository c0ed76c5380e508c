"""What the comparison screen shows: the pair as this expert sees it, aligned, with evidence and the judge.

The expert sees two blind profiles labelled A (left) and B (right); which canonical profile is on the left
is the assignment's ``flipped``. Everything stored stays canonical ('a' is ``comparison.profile_a``), so
this module is where display terms and canonical terms meet.

Profile text and judge reasoning are model output: nothing here marks them safe. The only HTML built in
Python is the evidence highlighting, which escapes every piece of abstract text it wraps.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import markdown
import nh3
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from ..models import Assignment, Document, JudgeVerdict, Order, Profile
from ..profiles.format import Competency, ParsedProfile, align_competencies
from ..judging.verdicts import INCONSISTENT, combine_asked

DISPLAY_CHOICES = [("left", "A", "1"), ("right", "B", "2"), ("tie", "Tie", "3"), ("both_bad", "Both bad", "4")]
FLAGS = {"irrelevant": "irrelevant", "unsupported": "not supported"}

# Words in competency names too generic to count as evidence ("Advanced statistical methods" → "statist").
_GENERIC = {
    "ability", "advanced", "analysis", "and", "application", "applications", "applied", "approach",
    "approaches", "based", "development", "expertise", "for", "from", "general", "into", "knowledge",
    "method", "methods", "research", "skill", "skills", "studies", "study", "technique", "techniques",
    "the", "their", "understanding", "using", "with",
    # English filler of four letters or more (shorter words are never stems): in a name it says nothing about the
    # abstracts, and found there it only inflates the counts ("provide", "about", "being", "like").
    "able", "about", "above", "across", "after", "again", "against", "also", "among", "apply", "applying",
    "around", "because", "been", "before", "being", "below", "between", "both", "could", "different", "does",
    "doing", "done", "down", "during", "each", "effective", "effectively", "either", "else", "enough", "even",
    "ever", "every", "further", "given", "good", "have", "having", "here", "high", "however", "include",
    "included", "includes", "including", "itself", "just", "like", "made", "make", "makes", "making", "many",
    "more", "most", "much", "multiple", "must", "need", "needs", "novel", "only", "other", "others", "over",
    "overall", "provide", "provided", "provides", "providing", "rather", "same", "several", "should", "show",
    "showing", "shown", "shows", "since", "some", "strong", "such", "than", "that", "them", "then", "there",
    "these", "they", "this", "those", "through", "thus", "toward", "towards", "under", "until", "upon", "used",
    "uses", "various", "very", "well", "were", "what", "when", "where", "whether", "which", "while", "will",
    "within", "without", "work", "working", "works", "would", "your",
}
# Longest first; stripping one turns "modelling", "statistical", "genomics" into "model", "statist", "genom".
_SUFFIXES = ("ational", "ations", "ation", "ings", "ing", "ities", "ity", "ical", "ics", "sis", "ic", "al",
             "es", "ed", "s", "y")
_NAME_WORD = re.compile(r"[^\W\d_]+")


@dataclass
class Cell:
    """One competency of one shown profile, as a row of the aligned view."""

    side: str  # "left" | "right"
    label: str  # "A" | "B"
    index: int  # position in its profile; form fields are named by it
    name: str
    description: str
    stems: list[str]
    only: bool  # the other profile names nothing like it
    evidence: int = 0
    flag: str = ""

    # What the template shows, worked out here once: a screen has ten or so cells, and each lookup and tag in
    # the template costs more than the Python that replaces it (the cells were 2/3 of the partial's render).
    @property
    def field(self) -> str:
        return flag_field(self.side, self.index)

    @property
    def evidence_note(self) -> str:
        if self.evidence:
            return f"{self.evidence}× in abstracts"
        return "not found in abstracts" if self.stems else ""

    @property
    def flag_options(self) -> list[tuple[str, str, bool]]:
        return [(value, label, value == self.flag) for value, label in FLAGS.items()]


@dataclass
class ShownProfile:
    side: str
    label: str
    canonical: str  # "a" | "b"
    domain: str
    raw_text: str
    competencies: list[Competency]


@dataclass
class Abstract:
    title: str
    year: int | None
    text: SafeString  # escaped, with evidence marks


@dataclass
class JudgeRun:
    shown_first: str  # the display label of the profile the judge saw first
    preferred: str  # "A" | "B" | "Tie" in display terms, or "" when the output was invalid
    reasoning: str
    # The judge's own "A"/"B" follow its presentation order, which may be the reverse of the expert's.
    labels_swapped: bool


@dataclass
class JudgeView:
    outcome: str  # "left" | "right" | "tie" | "inconsistent" | "invalid"
    headline: str
    runs: list[JudgeRun]

    @property
    def has_verdict(self) -> bool:
        return any(run.preferred for run in self.runs)

    @property
    def has_reasoning(self) -> bool:
        # The offline judge reads its answer from one token's probabilities and writes no reasoning.
        return any(run.reasoning for run in self.runs)


@dataclass
class Pair:
    """The two profiles of an assignment in the order this expert sees them."""

    left: ShownProfile
    right: ShownProfile

    @classmethod
    def of(cls, assignment: Assignment) -> Pair:
        comparison = assignment.item.comparison
        first, second = comparison.profile_a, comparison.profile_b
        if assignment.flipped:
            first, second = second, first
        return cls(_shown(first, "left", assignment.flipped), _shown(second, "right", assignment.flipped))

    def canonical_choice(self, display: str) -> str:
        return canonical_choice(display, flipped=self.left.canonical == "b")

    def display_choice(self, canonical: str) -> str:
        sides = {self.left.canonical: "left", self.right.canonical: "right"}
        return sides.get(canonical, canonical)

    def display_label(self, canonical: str) -> str:
        return {self.left.canonical: self.left.label, self.right.canonical: self.right.label}[canonical]

    def flags_from(self, post) -> dict[str, dict[str, str]]:
        """Per-competency flags from the form, keyed canonically by profile and competency name."""
        flags: dict[str, dict[str, str]] = {}
        for shown in (self.left, self.right):
            marked = {}
            for index, competency in enumerate(shown.competencies):
                value = next((v for v in post.getlist(flag_field(shown.side, index)) if v in FLAGS), "")
                if value:
                    marked[competency.name] = value
            if marked:
                flags[shown.canonical] = marked
        return flags


def flag_field(side: str, index: int) -> str:
    """The form field of a competency's flag: by the side it is shown on and its position in its profile."""
    return f"flag-{side}-{index}"


def canonical_choice(display: str, *, flipped: bool) -> str:
    """A display answer ("left", "right", "tie", "both_bad") in canonical terms, given the assignment's ``flipped``."""
    sides = {"left": "b" if flipped else "a", "right": "a" if flipped else "b"}
    return sides.get(display, display)


def has_flags(post) -> bool:
    """Whether a posted form flags any competency (only then are the profiles needed to name them)."""
    return any(key.startswith("flag-") and value in FLAGS for key in post for value in post.getlist(key))


def _shown(profile: Profile, side: str, flipped: bool) -> ShownProfile:
    canonical = "a" if (side == "left") != flipped else "b"
    competencies = [Competency(str(c.get("name", "")), str(c.get("description", ""))) for c in profile.competencies]
    return ShownProfile(side, "A" if side == "left" else "B", canonical, profile.domain, profile.raw_text,
                        competencies)


@dataclass
class Screen:
    """Everything the comparison partial renders for one assignment."""

    assignment: Assignment
    pair: Pair
    # The structure-aware view: competencies both profiles name, side by side; then the rest of each.
    shared: list[tuple[Cell, Cell]]
    only_left: list[Cell]
    only_right: list[Cell]
    abstracts: list[Abstract]
    judge: JudgeView | None
    # After a reveal-after-vote vote: the expert's answer so far, which they may revise.
    revealed: bool = False
    choice: str = ""  # display terms, to check the right radio button
    rationale: str = ""


def build_screen(
    assignment: Assignment,
    documents: list[Document],
    verdicts: list[JudgeVerdict] | None,
    *,
    revealed: bool = False,
    posted=None,
) -> Screen:
    """The screen for one assignment; ``verdicts`` None means the judge is not shown now.

    The form is filled from ``posted`` (a form sent back with an error), else, once revealed, from the vote.
    """
    pair = Pair.of(assignment)
    vote = getattr(assignment, "vote", None) if revealed else None
    if posted is not None:
        choice, rationale, flags = posted.get("choice", ""), posted.get("rationale", ""), pair.flags_from(posted)
    elif vote is not None:
        choice, rationale, flags = pair.display_choice(vote.choice), vote.rationale, vote.competency_flags
    else:
        choice, rationale, flags = "", "", {}
    rows = _aligned_rows(pair, flags)
    shared = [(left, right) for left, right in rows if left and right]
    only_left = [left for left, right in rows if left and not right]
    only_right = [right for left, right in rows if right and not left]
    abstracts = _highlighted(documents, [cell for row in rows for cell in row if cell])
    judge = judge_view(verdicts, pair) if verdicts is not None else None
    return Screen(assignment, pair, shared, only_left, only_right, abstracts, judge, revealed, choice, rationale)


def _aligned_rows(pair: Pair, flags: dict) -> list[tuple[Cell | None, Cell | None]]:
    left = ParsedProfile(valid=True, domain=pair.left.domain, competencies=pair.left.competencies)
    right = ParsedProfile(valid=True, domain=pair.right.domain, competencies=pair.right.competencies)

    def cell(shown: ShownProfile, competency: Competency | None, match: Competency | None) -> Cell | None:
        if competency is None:
            return None
        return Cell(shown.side, shown.label, shown.competencies.index(competency), competency.name,
                    competency.description, evidence_stems(competency.name), only=match is None,
                    flag=flags.get(shown.canonical, {}).get(competency.name, ""))

    return [(cell(pair.left, a, b), cell(pair.right, b, a)) for a, b in align_competencies(left, right)]


def evidence_stems(name: str) -> list[str]:
    """The word stems of a competency name that are worth finding in the abstracts."""
    stems = []
    for word in _NAME_WORD.findall(name):
        acronym = word.isupper() and len(word) >= 2
        lowered = word.casefold()
        if lowered in _GENERIC or (len(lowered) < 4 and not acronym):
            continue
        stems.append(lowered if acronym else _stem(lowered))
    return list(dict.fromkeys(stems))


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            word = word[: -len(suffix)]
            break
    if len(word) > 4 and word[-1] == word[-2]:
        word = word[:-1]  # "modell" → "model"
    return word


def _highlighted(documents: list[Document], cells: list[Cell]) -> list[Abstract]:
    stems = sorted({stem for cell in cells for stem in cell.stems}, key=len, reverse=True)
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, stems)) + r")\w*", re.IGNORECASE) if stems else None
    found: Counter[str] = Counter()
    abstracts = []
    for document in documents:
        text = _mark(document.abstract, pattern, found) if pattern else escape(document.abstract)
        abstracts.append(Abstract(document.title, document.year, text))
    for cell in cells:
        cell.evidence = sum(n for term, n in found.items() if term.startswith(tuple(cell.stems))) if cell.stems else 0
    return abstracts


def _mark(text: str, pattern: re.Pattern, found: Counter) -> SafeString:
    pieces, last = [], 0
    for match in pattern.finditer(text):
        term = match.group(0).casefold()
        found[term] += 1
        pieces += [escape(text[last : match.start()]),
                   f'<mark class="ev" data-term="{escape(term)}">{escape(match.group(0))}</mark>']
        last = match.end()
    pieces.append(escape(text[last:]))
    return mark_safe("".join(pieces))


def judge_view(verdicts: list[JudgeVerdict], pair: Pair) -> JudgeView | None:
    """The campaign judge's verdict in this expert's labels: both orders combined, each order's reasoning."""
    by_order = {verdict.order: verdict for verdict in verdicts}
    if not by_order:
        return None

    def canonical(order: str) -> str | None:
        verdict = by_order.get(order)
        return verdict.preferred if verdict and verdict.is_valid else None

    combined = combine_asked(canonical(Order.AB), canonical(Order.BA), len(by_order))
    outcome = pair.display_choice(combined) if combined in ("a", "b") else combined
    runs = []
    for order in (Order.AB, Order.BA):
        verdict = by_order.get(order)
        if verdict is None:
            continue
        first = "a" if order == Order.AB else "b"
        preferred = verdict.preferred if verdict.is_valid else ""
        runs.append(JudgeRun(
            shown_first=pair.display_label(first),
            preferred="Tie" if preferred == "tie" else (pair.display_label(preferred) if preferred else ""),
            reasoning=verdict.reasoning,
            labels_swapped=pair.display_label(first) != "A",
        ))
    orderless = next(iter(by_order.values())).judge.orderless
    return JudgeView(outcome, _headline(outcome, pair, one_order=len(by_order) == 1, orderless=orderless), runs)


def _headline(outcome: str, pair: Pair, one_order: bool = False, orderless: bool = False) -> str:
    if orderless and outcome in ("left", "right", "tie"):
        said = "calls it a tie" if outcome == "tie" else \
            f"prefers {pair.left.label if outcome == 'left' else pair.right.label}"
        return f"The judge {said}, scoring each profile on its own (no presentation order)."
    if one_order and outcome in ("left", "right", "tie"):
        said = "calls it a tie" if outcome == "tie" else \
            f"prefers {pair.left.label if outcome == 'left' else pair.right.label}"
        return f"The judge {said}, in the one presentation order it was asked."
    if outcome in ("left", "right"):
        label = pair.left.label if outcome == "left" else pair.right.label
        return f"The judge prefers {label}, in both presentation orders."
    if outcome == "tie":
        return "The judge calls it a tie, in both presentation orders."
    if outcome == INCONSISTENT:
        return "The judge was inconsistent: its answer changed with the presentation order."
    return "The judge gave no valid answer in at least one presentation order."


@lru_cache(maxsize=64)
def render_guidelines(text: str) -> SafeString:
    """Campaign guidelines: markdown written by admins, still sanitised (links, lists, emphasis survive).

    Cached by the text itself (a pure function of it), so an edit shows at once and a page load costs nothing.
    """
    return mark_safe(nh3.clean(markdown.markdown(text)))


def display_choices(checked: str) -> list[dict]:
    return [{"value": value, "label": label, "key": key, "checked": value == checked}
            for value, label, key in DISPLAY_CHOICES]

