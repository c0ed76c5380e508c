"""A study run elsewhere, written as the files CompX's documented imports read.

Like the study of issue 16: profiles from four models × three extraction methods; each expert ran one knockout
tournament over the twelve profiles of their own papers (titles only, no abstracts; twelve entrants give a bye
in round 3); a judge gave one verdict per match, in one presentation order; a second expert cross-checked a
few matches of each tournament. Some profiles break the format's rules (too many competencies, a name over 80
characters) and still took part, as they did in the study.

``write_study(folder, flip=True)`` swaps a and b in a random half of the pairs it writes (winners, orders and
choices swapped with them), and ``shuffle=True`` writes the profiles in another order, so they are stored in
another order: what a labelling-invariant figure must not notice.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

MODELS = {"gpt-4o": 1.2, "llama-3-70b": 0.6, "mistral-7b": -0.2, "phi-3-mini": -0.8}  # latent quality
METHODS = {"zero-shot": -0.4, "few-shot": 0.2, "chain-of-thought": 0.5}
EXPERTS = ["Maria Schmidt", "Jonas Weber", "Aiko Tanaka", "Lena Fischer", "Omar Haddad", "Sofia Rossi"]
JUDGE = "gpt-4o-judge"
CAMPAIGN = "Study 2024: profiles by model and method"
CROSS_CHECKS = 4  # matches of each tournament a second expert also voted on
TOPICS = ["Protein folding", "Flood modelling", "Graph neural networks", "Bayesian statistics", "Field sampling",
          "Remote sensing", "Causal inference", "Microscopy", "Climate downscaling", "Enzyme kinetics",
          "Optimal transport", "Survey design"]


def generator_name(model: str, method: str) -> str:
    return f"{model}/{method}"


@dataclass
class Study:
    folder: Path
    campaign: str = CAMPAIGN
    profiles: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # reason kind → profiles written that break the rules
    matches: int = 0  # judged matches (byes not counted)
    byes: int = 0
    implied: int = 0  # preferences the trees imply beyond their matches
    cross_checks: int = 0
    same_model_matches: int = 0
    on_invalid_matches: int = 0

    @property
    def documents(self) -> Path:
        return self.folder / "documents.jsonl"

    @property
    def profile_file(self) -> Path:
        return self.folder / "profiles.jsonl"

    @property
    def tournaments(self) -> Path:
        return self.folder / "tournaments.jsonl"

    @property
    def votes(self) -> Path:
        return self.folder / "votes.jsonl"


def _profile_text(rng: random.Random, competencies: int, long_name: bool) -> str:
    names = rng.sample(TOPICS, min(competencies, len(TOPICS)))
    names += [f"Topic {i}" for i in range(competencies - len(names))]
    if long_name:
        names[0] = "Integrated multi-scale computational and experimental characterisation of complex systems"
    lines = [f'Domain: "Research on {names[1].lower()}"', "", "Competencies:"]
    lines += [f"- {name}: The abstracts show {name.lower()} applied to the author's data." for name in names]
    return "\n".join(lines)


def _shape(model: str, method: str, rng: random.Random) -> tuple[int, bool, str]:
    """(competencies, an over-long name, the rule it breaks or "") for one profile."""
    if model == "phi-3-mini" and method == "zero-shot":
        return 10, False, "too_many"
    if model == "mistral-7b" and method == "chain-of-thought" and rng.random() < 0.5:
        return 5, True, "name_too_long"
    return rng.randint(3, 8), False, ""


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def write_study(folder: Path, seed: int = 7, flip: bool = False, shuffle: bool = False) -> Study:
    rng = random.Random(seed)
    flips = random.Random(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    study = Study(folder)
    documents, profiles, tournaments, votes = [], [], [], []
    quality: dict[tuple[str, str], float] = {}
    played: dict[str, list[tuple[dict, dict, str]]] = {}  # sample → its matches (a, b, winner)
    broken_refs: set[tuple[str, str]] = set()
    for number, expert in enumerate(EXPERTS):
        sample = f"{expert} — own papers"
        for paper in range(4):
            documents.append({"id": f"e{number}-p{paper}", "title": f"{expert.split()[1]} et al., paper {paper + 1}",
                              "authors": [expert], "year": 2015 + paper, "sample": sample})
        entrants = []
        for model, strength in MODELS.items():
            for method, effect in METHODS.items():
                competencies, long_name, broken = _shape(model, method, rng)
                ref = {"generator": generator_name(model, method), "candidate": 0}
                profiles.append({"sample": sample, **ref, "text": _profile_text(rng, competencies, long_name),
                                 "attributes": {"model": model, "method": method}})
                study.profiles += 1
                if broken:
                    study.invalid[broken] = study.invalid.get(broken, 0) + 1
                    broken_refs.add((sample, ref["generator"]))
                quality[(sample, ref["generator"])] = strength + effect - (3 if broken else 0) + rng.gauss(0, 0.3)
                entrants.append(ref)
        rng.shuffle(entrants)
        matches = _knockout(entrants, lambda a, b: _expert_choice(rng, quality, sample, a, b), study)
        played[sample] = [(m["a"], m["b"], m["winner"]) for m in matches if m["b"] is not None]
        tournaments.append({"sample": sample, "expert": expert, "matches": [_flipped(m, flips, flip) for m in matches]})
        for a, b, _ in played[sample]:
            prefer = _sigmoid(1.5 * (quality[(sample, a["generator"])] - quality[(sample, b["generator"])]) + 0.4)
            order = rng.choice(["ab", "ba"])
            shown_first_bias = 0.3 if order == "ab" else -0.3
            preferred = "a" if rng.random() < _sigmoid(math.log(prefer / (1 - prefer)) + shown_first_bias) else "b"
            votes.append(_flipped_pair({"sample": sample, "a": a, "b": b, "judge": JUDGE, "order": order,
                                        "preferred": preferred}, flips, flip))
            study.same_model_matches += a["generator"].split("/")[0] == b["generator"].split("/")[0]
    for number, expert in enumerate(EXPERTS):  # the next expert cross-checks a few of each tournament's matches
        checker = EXPERTS[(number + 1) % len(EXPERTS)]
        sample = f"{expert} — own papers"
        for a, b, winner in rng.sample(played[sample], CROSS_CHECKS):
            choice = winner if rng.random() < 0.7 else rng.choice(["a", "b", "tie", "both_bad"])
            votes.append(_flipped_pair({"sample": sample, "a": a, "b": b, "expert": checker, "choice": choice},
                                       flips, flip))
            study.cross_checks += 1
    if shuffle:
        random.Random(seed + 2).shuffle(profiles)
    for path, rows in ((study.documents, documents), (study.profile_file, profiles),
                       (study.tournaments, tournaments), (study.votes, votes)):
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    study.on_invalid_matches = sum(1 for sample, rows in played.items() for a, b, _ in rows
                                   if (sample, a["generator"]) in broken_refs or (sample, b["generator"]) in broken_refs)
    return study


def _expert_choice(rng: random.Random, quality: dict, sample: str, a: dict, b: dict) -> str:
    if rng.random() < 0.06:
        return "tie"
    p = _sigmoid(2 * (quality[(sample, a["generator"])] - quality[(sample, b["generator"])]))
    return "a" if rng.random() < p else "b"


def _knockout(entrants: list[dict], choose, study: Study) -> list[dict]:
    """Pairs in order, the odd one out gets a bye and plays first next round; a tie sends a on."""
    matches, round_number = [], 1
    beaten: dict[str, int] = {}
    while len(entrants) > 1:
        pairs = list(zip(entrants[0::2], entrants[1::2]))
        bye = entrants[-1] if len(entrants) % 2 else None
        winners = []
        for a, b in pairs:
            winner = choose(a, b)
            matches.append({"round": round_number, "a": a, "b": b, "winner": winner})
            study.matches += 1
            if winner in ("a", "b"):
                won, lost = (a, b) if winner == "a" else (b, a)
                study.implied += beaten.get(lost["generator"], 0)
                beaten[won["generator"]] = beaten.get(won["generator"], 0) + 1 + beaten.get(lost["generator"], 0)
            winners.append(b if winner == "b" else a)
        if bye is not None:
            matches.append({"round": round_number, "a": bye, "b": None})
            study.byes += 1
        entrants = ([bye] if bye is not None else []) + winners
        round_number += 1
    return matches


_SWAP = {"a": "b", "b": "a", "ab": "ba", "ba": "ab"}


def _flipped(match: dict, flips: random.Random, flip: bool) -> dict:
    if match["b"] is None or not (flip and flips.random() < 0.5):
        return dict(match)
    return {**match, "a": match["b"], "b": match["a"], "winner": _SWAP.get(match["winner"], match["winner"])}


def _flipped_pair(row: dict, flips: random.Random, flip: bool) -> dict:
    if not (flip and flips.random() < 0.5):
        return row
    swapped = {**row, "a": row["b"], "b": row["a"]}
    for key in ("order", "preferred", "choice"):
        if key in row:
            swapped[key] = _SWAP.get(row[key], row[key])
    return swapped
