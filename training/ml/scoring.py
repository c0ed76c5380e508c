"""Likelihood scoring of competency profiles: how much a sample's abstracts raise a profile's likelihood.

PMI(profile; abstracts) = mean log p(profile tokens | prompt with the sample's abstracts)
                        − mean log p(profile tokens | the same prompt with a baseline),
in the spirit of GPTScore (Fu et al. 2023). The baseline is the prompt with other researchers' abstracts
(``baseline="other"``) or with none (``"none"``). Plain likelihood rewards fluent generic text; the
difference keeps what the abstracts themselves explain: a profile grounded in them gains, a generic or
invented one does not.

Each profile is scored on its own, so a pair has no presentation order: :func:`decide` compares two
scores with a tie margin. A context's prompt (the abstracts) is encoded once and its key/value cache is
expanded over a batch of that sample's profiles; only the profile tokens are run per profile.

A chat model (SmolLM2-Instruct) gets our own system message and the profile as the assistant's answer;
a base model without a chat template (Gemma 3 270M) gets a plain-text prompt.

Nothing here imports Django.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Abstracts = Sequence[tuple[str, str]]  # (title, text) of one sample's documents
ProgressCallback = Callable[[int, int], None]  # (profile passes done, total): each profile is read per context

# Frozen with the prompt text below: scores are only comparable under one version.
SCORER_PROMPT_VERSION = "pmi-v1"
BASELINES = ("other", "none")
PARTS = ("whole", "competencies")
A, B, TIE = "a", "b", "tie"

SYSTEM = ("You read the abstracts of one researcher's publications and write that researcher's competency "
          "profile: the research domain and the competencies the abstracts show.")
REQUEST = "Write the competency profile of the researcher who wrote these abstracts."
PLAIN_HEADER = "Abstracts of publications by one researcher:"
PLAIN_ANSWER = "Competency profile of this researcher:"

_COMPETENCIES_HEADER = re.compile(r"^[ \t#*]*(?:key\s+)?competenc(?:y|ies)[ \t*]*:?[ \t*]*$",
                                  re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class ScorerSettings:
    """How profiles are scored and pairs decided.

    ``margin``: a pair whose PMI difference is at most this (nats per token) is a tie.
    ``batch_logits``: profile tokens × vocabulary per forward pass stay under about this many logits,
    so a model with a large vocabulary (Gemma: 262k) runs smaller batches.
    """

    baseline: str = "other"
    part: str = "whole"
    margin: float = 0.02
    max_profile_tokens: int = 512
    batch_logits: int = 2 ** 27

    def validate(self) -> "ScorerSettings":
        if self.baseline not in BASELINES:
            raise ValueError(f"ScorerSettings.baseline: one of {BASELINES} (got {self.baseline!r})")
        if self.part not in PARTS:
            raise ValueError(f"ScorerSettings.part: one of {PARTS} (got {self.part!r})")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"ScorerSettings.margin: a finite number >= 0 (got {self.margin!r})")
        if self.max_profile_tokens < 1:
            raise ValueError(f"ScorerSettings.max_profile_tokens: must be >= 1 (got {self.max_profile_tokens!r})")
        return self

    def to_dict(self) -> dict[str, Any]:
        """What a stored verdict needs to say how it was scored."""
        return {**dataclasses.asdict(self), "prompt_version": SCORER_PROMPT_VERSION}


@dataclass(frozen=True)
class ProfileScore:
    """One profile's mean token log-probabilities with its abstracts and under the baseline (nats)."""

    conditional: float | None
    baseline: float | None
    tokens: int  # scored tokens
    error: str = ""  # why the profile has no score (empty text); "" when scored

    @property
    def pmi(self) -> float | None:
        if self.conditional is None or self.baseline is None:
            return None
        return self.conditional - self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {"conditional": self.conditional, "baseline": self.baseline, "pmi": self.pmi,
                "tokens": self.tokens, "error": self.error}


@dataclass(frozen=True)
class Decision:
    """A pair decided by score: ``difference`` = PMI(a) − PMI(b); None when a profile has no score."""

    preferred: str  # "a" | "b" | "tie"
    difference: float | None
    margin: float

    @property
    def decisive(self) -> bool:
        return self.preferred != TIE


def decide(a: ProfileScore, b: ProfileScore, margin: float) -> Decision:
    """Prefer the profile with the higher PMI when the difference exceeds ``margin``; else a tie.

    Symmetric by construction: decide(b, a) is decide(a, b) mirrored. A profile without a score (empty)
    loses to one with a score; two without are a tie.
    """
    if a.pmi is None or b.pmi is None:
        preferred = TIE if a.pmi is None and b.pmi is None else (B if a.pmi is None else A)
        return Decision(preferred, None, margin)
    difference = a.pmi - b.pmi
    preferred = A if difference > margin else B if difference < -margin else TIE
    return Decision(preferred, difference, margin)


# --- prompts ---------------------------------------------------------------------------------------------


def format_abstracts(abstracts: Abstracts) -> str:
    return "\n\n".join(f"Abstract {i}: {title.strip()}\n{text.strip()}"
                       for i, (title, text) in enumerate(abstracts, start=1))


def is_chat(tokenizer: "PreTrainedTokenizerBase") -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def context_prompt(tokenizer: "PreTrainedTokenizerBase", abstracts: Abstracts) -> str:
    """The text before the profile; no abstracts gives the same prompt without its abstracts block."""
    block = f"Abstracts:\n\n{format_abstracts(abstracts)}\n\n" if abstracts else ""
    if is_chat(tokenizer):
        # Our own system message: SmolLM2's template otherwise inserts "You are SmolLM...".
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": block + REQUEST}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    block = f"{PLAIN_HEADER}\n\n{format_abstracts(abstracts)}\n\n" if abstracts else ""
    return f"{block}{PLAIN_ANSWER}\n\n"


def context_ids(tokenizer: "PreTrainedTokenizerBase", abstracts: Abstracts) -> list[int]:
    text = context_prompt(tokenizer, abstracts)
    if is_chat(tokenizer):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    # A base model expects its BOS token first (Gemma degrades badly without it).
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + ids


@dataclass(frozen=True)
class Target:
    """A profile's token ids (tokenized alone, so every context scores the same tokens) and which count."""

    ids: list[int]
    scored_from: int  # index of the first scored token


def profile_target(tokenizer: "PreTrainedTokenizerBase", text: str, part: str, max_tokens: int) -> Target:
    text = text.strip()
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"][:max_tokens]
    start = 0
    if part == "competencies":
        header = _COMPETENCIES_HEADER.search(text)
        char = header.end() if header else (text.find("\n") + 1 if "\n" in text else 0)
        offsets = encoded["offset_mapping"][:len(ids)]
        start = next((i for i, (begin, _) in enumerate(offsets) if begin >= char), len(ids))
    return Target(ids, start)


# --- scoring ---------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """A context prompt run once: its key/value cache and the logits that predict the profile's first token."""

    cache: Any
    first_logits: "torch.Tensor"
    length: int


class Scorer:
    """Scores profiles against their sample's abstracts with one causal LM (see the module docstring).

    The last ``keep_contexts`` encoded prompts are kept, so a sample's abstracts used as another sample's
    baseline, or the abstract-less baseline shared by all samples, are encoded only once.
    """

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                 settings: ScorerSettings | None = None, keep_contexts: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = (settings or ScorerSettings()).validate()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.vocab = model.get_output_embeddings().weight.shape[0]
        self.keep_contexts = keep_contexts
        self._encoded: OrderedDict[tuple[int, ...], Encoded] = OrderedDict()
        self.encodings = 0  # context prompts actually run (the rest came from the kept ones)

    @property
    def device(self) -> "torch.device":
        return next(self.model.parameters()).device

    def score(self, abstracts: Abstracts, profiles: Sequence[str], baselines: Sequence[Abstracts] = (),
              on_progress: ProgressCallback | None = None) -> list[ProfileScore]:
        """Score each profile of one sample: its abstracts, then each baseline context (averaged).

        ``baselines``: other researchers' abstracts, one context each (``baseline="other"``); ignored for
        ``"none"``. Empty profiles get a score-less ProfileScore with the reason.
        """
        if not abstracts:
            raise ValueError("score: a sample needs at least one abstract")
        contexts = self._baseline_contexts(baselines)
        targets = self.targets(profiles)
        scorable = [i for i, t in enumerate(targets) if t.scored_from < len(t.ids)]
        chosen = [targets[i] for i in scorable]
        total, done = len(chosen) * (1 + len(contexts)), 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if on_progress is not None:
                on_progress(done, total)

        conditional = [mean_of(t, lp) for t, lp in zip(chosen, self.token_logprobs(abstracts, chosen, advance))]
        base_runs = [[mean_of(t, lp) for t, lp in zip(chosen, self.token_logprobs(ctx, chosen, advance))]
                     for ctx in contexts]
        scores = [ProfileScore(None, None, 0, "empty profile: nothing to score") for _ in targets]
        for k, i in enumerate(scorable):
            baseline = sum(run[k] for run in base_runs) / len(base_runs)
            scores[i] = ProfileScore(conditional[k], baseline, len(chosen[k].ids) - chosen[k].scored_from)
        return scores

    def targets(self, profiles: Sequence[str]) -> list[Target]:
        return [profile_target(self.tokenizer, text or "", self.settings.part, self.settings.max_profile_tokens)
                for text in profiles]

    def _baseline_contexts(self, baselines: Sequence[Abstracts]) -> list[Abstracts]:
        if self.settings.baseline == "none":
            return [()]
        contexts = [b for b in baselines if b]
        if not contexts:
            raise ValueError('baseline "other" needs other researchers\' abstracts (baselines=[...])')
        return contexts

    def encode(self, abstracts: Abstracts) -> Encoded:
        """The context prompt's cache, from the kept ones when this prompt was run recently."""
        import torch

        ids = tuple(context_ids(self.tokenizer, abstracts))
        if ids in self._encoded:
            self._encoded.move_to_end(ids)
            return self._encoded[ids]
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=1)
        encoded = Encoded(out.cache, out.logits[0, -1].float(), len(ids))
        self.encodings += 1
        self._encoded[ids] = encoded
        while len(self._encoded) > self.keep_contexts:
            self._encoded.popitem(last=False)
        return encoded

    def token_logprobs(self, abstracts: Abstracts, targets: Sequence[Target],
                       advance: Callable[[int], None] = lambda n: None) -> list["torch.Tensor"]:
        """Log-probability of every token of each target after the prompt with ``abstracts`` (fp32, CPU).

        The prompt is encoded once; its cache is expanded over batches of targets, longest first.
        """
        import torch

        if not targets:
            return []
        encoded = self.encode(abstracts)
        order = sorted(range(len(targets)), key=lambda i: -len(targets[i].ids))
        results: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for batch in self._batches(order, targets):
                for i, values in zip(batch, self._score_batch(encoded, [targets[i] for i in batch])):
                    results[i] = values
                advance(len(batch))
        return [results[i] for i in range(len(targets))]

    def _batches(self, order: list[int], targets: Sequence[Target]) -> list[list[int]]:
        batches: list[list[int]] = []
        for i in order:
            # Sorted longest first, so a batch's first row sets its width.
            width = len(targets[batches[-1][0]].ids) if batches else 0
            if batches and (len(batches[-1]) + 1) * width * self.vocab <= self.settings.batch_logits:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def _score_batch(self, encoded: Encoded, rows: Sequence[Target]) -> list["torch.Tensor"]:
        import torch

        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, :len(r.ids)] = torch.tensor(r.ids)
        ids = ids.to(self.device)
        # The kept cache must not grow: each batch continues from its own copy.
        cache = copy.deepcopy(encoded.cache)
        cache.batch_repeat_interleave(len(rows))
        # Right padding after a shared prefix needs no attention mask: causal attention never lets a real
        # token see the padding after it, and positions continue from the cache.
        logits = self.model(input_ids=ids, cache=cache, use_cache=True).logits
        values = []
        for k, r in enumerate(rows):
            n = len(r.ids)
            # Token 0 is predicted by the prompt's last position, token j by the profile's position j − 1.
            predicting = torch.cat([encoded.first_logits[None], logits[k, :n - 1].float()], dim=0)
            logprobs = torch.log_softmax(predicting, dim=-1)
            values.append(logprobs.gather(1, ids[k, :n, None])[:, 0].cpu())
        return values

    def token_logprobs_uncached(self, abstracts: Abstracts, targets: Sequence[Target]) -> list["torch.Tensor"]:
        """The same numbers from one full forward pass per target: the reference the cached path must equal."""
        import torch

        prefix = context_ids(self.tokenizer, abstracts)
        values = []
        with torch.inference_mode():
            for t in targets:
                ids = torch.tensor([prefix + t.ids], device=self.device)
                logits = self.model(input_ids=ids).logits[0, len(prefix) - 1:-1].float()
                values.append(torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prefix):, None])[:, 0].cpu())
        return values


def mean_of(target: Target, token_logprobs: "torch.Tensor") -> float:
    """Mean log-probability of the target's scored tokens."""
    return float(token_logprobs[target.scored_from:].mean())
