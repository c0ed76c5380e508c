"""Batched candidate generation with a local transformers model.

Each conversation (system + user messages) is rendered with the model's chat template, the assistant turn
is prefilled with ``"Domain:"`` (``continue_final_message=True``) so that a small model starts writing a
profile instead of drifting, and k candidates per conversation are produced. Several conversations'
k candidates are decoded together (left padding), which is what makes a CPU or GPU busy enough to be
fast; :func:`generate_naive` does the same work one prompt and one candidate at a time and exists as a
correctness reference (greedy outputs must match).

Greedy decoding and sampling run on one of two engines (``DecodingSettings.engine``): ``"loop"``, our own
decoding loop (training/ml/decoding.py), the default, about 10x faster per CPU-second with the format guide
(bench/generation.py); or ``"generate"``, transformers' ``model.generate`` with the repetition penalty and
the guide as logits processors, kept as the baseline it is measured and tested against.

Decoding modes, chosen by :class:`DecodingSettings`:

- greedy: ``temperature == 0`` and ``num_beams == 1`` (one candidate),
- sampling: ``temperature > 0`` (k independent samples),
- beam search: ``num_beams > 1`` (the k best beams),
- diverse beam search: ``num_beam_groups > 1`` (the original thesis: 8 beams in 8 groups, penalty 0.8).
  transformers 5 moved group beam search to a Hub repository that needs network access and
  ``trust_remote_code``, so it is implemented here (:func:`_diverse_beam_search`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .guide import FormatGuide, Vocabulary

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Conversation = list[dict[str, str]]
ProgressCallback = Callable[[int, int, int], None]  # (conversations done, total, completion tokens so far)
TokensCallback = Callable[[int], None]  # completion tokens written so far, the batch being decoded included
StopCallback = Callable[[], bool]

DEFAULT_PREFILL = "Domain:"
ENGINES = ("loop", "generate")


@dataclass
class DecodingSettings:
    """How candidates are decoded. ``temperature == 0`` means greedy (or plain beam search with beams)."""

    temperature: float = 0.8
    top_p: float = 0.95
    repetition_penalty: float = 1.15
    max_new_tokens: int = 320
    num_candidates: int = 8  # k candidates per conversation
    num_beams: int = 1
    num_beam_groups: int = 1
    diversity_penalty: float = 0.0
    seed: int | None = 0
    format_guide: bool = False  # keep the output on the profile's line structure (training.ml.guide)
    # How greedy decoding and sampling run: "loop" (training.ml.decoding, fast) or "generate" (transformers'
    # model.generate, the baseline it is measured against). Beam searches have one implementation each.
    engine: str = "loop"

    @property
    def mode(self) -> str:
        if self.num_beam_groups > 1:
            return "diverse_beam"
        if self.num_beams > 1:
            return "beam"
        return "sample" if self.temperature > 0 else "greedy"

    def validate(self) -> "DecodingSettings":
        """Raise ValueError naming the offending field; return self so calls can be chained."""

        def fail(field: str, why: str) -> None:
            raise ValueError(f"DecodingSettings.{field}: {why} (got {getattr(self, field)!r})")

        if self.temperature < 0:
            fail("temperature", "must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            fail("top_p", "must be in (0, 1]")
        if self.repetition_penalty <= 0:
            fail("repetition_penalty", "must be > 0 (1.0 = off)")
        if self.max_new_tokens < 1:
            fail("max_new_tokens", "must be >= 1")
        if self.num_candidates < 1:
            fail("num_candidates", "must be >= 1")
        if self.num_beams < 1:
            fail("num_beams", "must be >= 1")
        if self.num_beam_groups < 1:
            fail("num_beam_groups", "must be >= 1")
        if self.num_beams % self.num_beam_groups:
            fail("num_beam_groups", f"must divide num_beams={self.num_beams}")
        if self.diversity_penalty < 0:
            fail("diversity_penalty", "must be >= 0")
        mode = self.mode
        if mode == "greedy" and self.num_candidates != 1:
            fail("num_candidates", "greedy decoding (temperature=0, num_beams=1) gives one candidate; "
                 "use temperature > 0 or beam search for k > 1")
        if mode in ("beam", "diverse_beam") and self.num_candidates > self.num_beams:
            fail("num_candidates", f"beam search returns at most num_beams={self.num_beams} candidates")
        if mode == "diverse_beam":
            if self.diversity_penalty <= 0:
                fail("diversity_penalty", "diverse beam search (num_beam_groups > 1) needs a penalty > 0")
            if self.temperature > 0:
                fail("temperature", "diverse beam search is deterministic; set temperature=0")
        if self.engine not in ENGINES:
            fail("engine", f"must be one of {', '.join(ENGINES)}")
        if self.format_guide and mode in ("beam", "diverse_beam"):
            fail("format_guide", "works with greedy decoding and sampling, not with beam search")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecodingSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DecodingSettings: unknown field(s) {unknown}")
        return cls(**data).validate()


@dataclass
class Candidate:
    """One generated completion. ``text`` starts with the prefill, so it is a whole profile text."""

    text: str
    prompt_tokens: int  # non-padding prompt tokens, the prefill included
    completion_tokens: int  # generated tokens up to and including EOS; padding never counted
    finish_reason: str = "stop"  # "stop" (EOS) or "length" (hit max_new_tokens)


# ---------------------------------------------------------------------------------------------------------
# Prompt rendering


def render_prompt(
    tokenizer: "PreTrainedTokenizerBase",
    conversation: Conversation,
    prefill: str | None = DEFAULT_PREFILL,
) -> str:
    """Render a system + user conversation with the assistant turn opened (and prefilled)."""
    if not conversation or not all(isinstance(m, dict) and "role" in m and "content" in m for m in conversation):
        raise ValueError("conversation must be a non-empty list of {'role', 'content'} messages")
    # SmolLM2's template silently injects "You are SmolLM..." when the first message is not a system one.
    if conversation[0]["role"] != "system":
        raise ValueError("conversation must start with our own system message")
    if conversation[-1]["role"] == "assistant":
        raise ValueError("conversation must end with a user message; the assistant turn is added here")
    if prefill:
        messages = [*conversation, {"role": "assistant", "content": prefill}]
        return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def _eos_ids(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> list[int]:
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _vocabulary(tokenizer: "PreTrainedTokenizerBase", eos_ids: list[int]) -> Vocabulary:
    # Built once per tokenizer: a worker keeps its model, and so its tokenizer, for its whole life.
    vocabulary = getattr(tokenizer, "_compx_guide_vocabulary", None)
    if vocabulary is None or vocabulary.eos_ids != eos_ids:
        vocabulary = Vocabulary(tokenizer, eos_ids)
        tokenizer._compx_guide_vocabulary = vocabulary
    return vocabulary


def _model_device(model: "PreTrainedModel") -> "torch.device":
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------------------
# Core: one batch of prompts -> rows of generated token ids


def _repetition_penalty(settings: DecodingSettings, pad_lens: "torch.Tensor", rows_per_prompt: int):
    """Repetition penalty that ignores each row's left padding.

    transformers' built-in penalty also penalises the pad token found in a padded row's prompt, so a padded
    row would decode differently from the same prompt alone whenever pad is not already in the prompt.
    """
    from transformers import RepetitionPenaltyLogitsProcessor

    if settings.repetition_penalty == 1.0:
        return None
    return RepetitionPenaltyLogitsProcessor(
        float(settings.repetition_penalty),
        prompt_ignore_length=pad_lens.repeat_interleave(rows_per_prompt),
    )


def _generate_rows(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    prompts: list[str],
    settings: DecodingSettings,
    num_return: int,
    seed: int | None,
    on_tokens: TokensCallback | None = None,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Run one generate call; return (generated ids [len(prompts)*num_return, T], prompt lengths).

    ``on_tokens(written)`` hears the tokens written during the call (greedy decoding and sampling, both engines;
    beam searches report nothing until they end)."""
    import torch
    from transformers import LogitsProcessorList

    from .decoding import decode  # imports transformers, which a web process that only validates never needs

    device = _model_device(model)
    # Left padding whatever the tokenizer's default (TRL sets right padding): prompts must end together.
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    input_ids = enc["input_ids"].to(device)
    attention_mask = enc["attention_mask"].to(device)
    prompt_lens = attention_mask.sum(dim=1).cpu()
    pad_lens = (input_ids.shape[1] - attention_mask.sum(dim=1)).long()
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    if seed is not None:
        torch.manual_seed(seed)

    mode = settings.mode
    with torch.inference_mode():
        if mode in ("greedy", "sample") and settings.engine == "loop":
            generated = decode(
                model, input_ids, attention_mask, num_return=num_return, max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature, top_p=settings.top_p,
                repetition_penalty=settings.repetition_penalty, eos_ids=eos_ids, pad_id=pad_id,
                guide_vocabulary=_vocabulary(tokenizer, eos_ids) if settings.format_guide else None,
                on_tokens=on_tokens,
            )
        elif mode == "diverse_beam":
            generated = _diverse_beam_search(model, input_ids, attention_mask, pad_lens, settings, eos_ids, pad_id)
        else:
            rows_per_prompt = settings.num_beams if mode == "beam" else num_return
            processors = LogitsProcessorList()
            rep = _repetition_penalty(settings, pad_lens, rows_per_prompt)
            if rep is not None:
                processors.append(rep)
            if settings.format_guide:
                processors.append(FormatGuide(_vocabulary(tokenizer, eos_ids), input_ids.shape[1],
                                              settings.max_new_tokens))
            if on_tokens is not None and mode in ("greedy", "sample"):
                processors.append(_TokenReport(on_tokens, input_ids.shape[1], eos_ids))
            kwargs: dict[str, Any] = dict(
                max_new_tokens=settings.max_new_tokens,
                num_return_sequences=num_return,
                num_beams=settings.num_beams,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
                logits_processor=processors,
            )
            if settings.temperature > 0:
                # top_k off: only temperature and top_p, like an OpenAI-compatible endpoint.
                kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if mode == "beam":
                kwargs.update(early_stopping=False, length_penalty=1.0)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            generated = out[:, input_ids.shape[1]:]
    return generated.cpu(), prompt_lens


class _TokenReport:
    """A logits processor that only watches: tells ``on_tokens`` what ``model.generate`` has written so far, at
    most every REPORT_EVERY_S (the loop engine's ``decode`` reports the same itself)."""

    def __init__(self, on_tokens: TokensCallback, prompt_length: int, eos_ids: list[int]):
        import time

        from .decoding import REPORT_EVERY_S

        self.on_tokens, self.prompt_length, self.eos_ids = on_tokens, prompt_length, eos_ids
        self.every_s, self.clock = REPORT_EVERY_S, time.monotonic
        self.last = self.clock()

    def __call__(self, input_ids: "torch.Tensor", scores: "torch.Tensor") -> "torch.Tensor":
        if self.clock() - self.last >= self.every_s:
            self.last = self.clock()
            self.on_tokens(written_tokens(input_ids[:, self.prompt_length:], self.eos_ids))
        return scores


def written_tokens(generated: "torch.Tensor", eos_ids: list[int]) -> int:
    """Tokens rows have written: each row's up to its first EOS, that EOS included (the padding after it not)."""
    import torch

    eos = torch.isin(generated, torch.tensor(eos_ids, device=generated.device)).long()
    before_first_eos = (eos.cumsum(dim=1) - eos) == 0
    return int(before_first_eos.sum())


def _rows_to_candidates(
    tokenizer: "PreTrainedTokenizerBase",
    generated: "torch.Tensor",
    prompt_lens: "torch.Tensor",
    num_return: int,
    eos_ids: list[int],
    prefill: str | None,
) -> list[list[Candidate]]:
    eos = set(eos_ids)
    results: list[list[Candidate]] = []
    for p, prompt_len in enumerate(prompt_lens.tolist()):
        cands = []
        for j in range(num_return):
            row = generated[p * num_return + j].tolist()
            # Rows that stopped early are padded after their EOS (pad may equal EOS): count up to the first EOS.
            stop = next((i for i, tok in enumerate(row) if tok in eos), None)
            content = row if stop is None else row[:stop]
            text = tokenizer.decode(content, skip_special_tokens=True)
            cands.append(
                Candidate(
                    text=(prefill or "") + text,
                    prompt_tokens=int(prompt_len),
                    completion_tokens=len(row) if stop is None else stop + 1,
                    finish_reason="length" if stop is None else "stop",
                )
            )
        results.append(cands)
    return results


# ---------------------------------------------------------------------------------------------------------
# Public entry points


def generate_batch(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    conversations: list[Conversation],
    settings: DecodingSettings | None = None,
    prefill: str | None = DEFAULT_PREFILL,
    batch_size: int = 8,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    on_tokens: TokensCallback | None = None,
) -> list[list[Candidate]]:
    """Generate ``settings.num_candidates`` candidates for each conversation.

    ``batch_size`` conversations (times k candidates) share one ``generate`` call. Between batches,
    ``on_progress(done, total, completion_tokens)`` is called and ``should_stop()`` is polled; when it
    returns True generation stops and the results so far are returned: a prefix of ``conversations``,
    so ``zip(conversations, results)`` pairs them up. While a batch decodes, ``on_tokens(completion_tokens)``
    hears every second or so how many tokens are written so far, this batch's included.

    Deterministic for a given seed and batch_size: batch b is seeded with ``seed + index of its first
    conversation``.
    """
    settings = (settings or DecodingSettings()).validate()
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1 (got {batch_size!r})")
    prompts = [render_prompt(tokenizer, c, prefill) for c in conversations]
    eos_ids = _eos_ids(model, tokenizer)
    k = settings.num_candidates
    results: list[list[Candidate]] = []
    tokens = 0
    for start in range(0, len(prompts), batch_size):
        if should_stop is not None and should_stop():
            break
        chunk = prompts[start:start + batch_size]
        seed = None if settings.seed is None else settings.seed + start
        before = tokens
        report = None if on_tokens is None else (lambda written: on_tokens(before + written))
        generated, prompt_lens = _generate_rows(model, tokenizer, chunk, settings, k, seed, report)
        batch = _rows_to_candidates(tokenizer, generated, prompt_lens, k, eos_ids, prefill)
        results.extend(batch)
        tokens += sum(c.completion_tokens for cands in batch for c in cands)
        if on_progress is not None:
            on_progress(len(results), len(prompts), tokens)
    return results


def generate_naive(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    conversations: list[Conversation],
    settings: DecodingSettings | None = None,
    prefill: str | None = DEFAULT_PREFILL,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> list[list[Candidate]]:
    """The same outputs computed one prompt and one candidate at a time (no padding, no batching).

    The benchmark baseline. Greedy output equals :func:`generate_batch`'s in fp32 (bf16 matmuls
    accumulate differently for different batch shapes, so a near-tie can flip). Beam modes decode one
    prompt at a time with all its beams, since beams cannot be separated.
    """
    settings = (settings or DecodingSettings()).validate()
    eos_ids = _eos_ids(model, tokenizer)
    k = settings.num_candidates
    results: list[list[Candidate]] = []
    tokens = 0
    for i, conversation in enumerate(conversations):
        if should_stop is not None and should_stop():
            break
        prompt = render_prompt(tokenizer, conversation, prefill)
        if settings.mode in ("beam", "diverse_beam"):
            seed = None if settings.seed is None else settings.seed + i
            generated, prompt_lens = _generate_rows(model, tokenizer, [prompt], settings, k, seed)
            cands = _rows_to_candidates(tokenizer, generated, prompt_lens, k, eos_ids, prefill)[0]
        else:
            cands = []
            for j in range(k):
                seed = None if settings.seed is None else settings.seed + i * k + j
                generated, prompt_lens = _generate_rows(model, tokenizer, [prompt], settings, 1, seed)
                cands.extend(_rows_to_candidates(tokenizer, generated, prompt_lens, 1, eos_ids, prefill)[0])
        results.append(cands)
        tokens += sum(c.completion_tokens for c in cands)
        if on_progress is not None:
            on_progress(len(results), len(conversations), tokens)
    return results


# ---------------------------------------------------------------------------------------------------------
# Diverse beam search (Vijayakumar et al. 2016, as transformers < 4.56 implemented it)


def _diverse_beam_search(
    model: "PreTrainedModel",
    input_ids: "torch.Tensor",
    attention_mask: "torch.Tensor",
    pad_lens: "torch.Tensor",
    settings: DecodingSettings,
    eos_ids: list[int],
    pad_id: int,
) -> "torch.Tensor":
    """Group beam search with Hamming diversity; returns generated ids [batch * k, T], EOS then pad.

    ``num_beams`` beams are split into ``num_beam_groups`` groups that are searched one after another at
    each step; a group's log-probabilities are lowered by ``diversity_penalty`` times the number of earlier
    groups (same prompt, same step) that just chose that token. The penalised scores accumulate, as in
    transformers' implementation. Length penalty 1.0, no early stopping; the k best finished hypotheses
    across all groups are returned.
    """
    import torch

    batch, _ = input_ids.shape
    n_beams, n_groups = settings.num_beams, settings.num_beam_groups
    group_size = n_beams // n_groups
    k = settings.num_candidates
    device = input_ids.device
    eos_set = set(eos_ids)

    ids = input_ids.repeat_interleave(n_beams, dim=0)
    mask = attention_mask.repeat_interleave(n_beams, dim=0)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = out.cache
    logits = out.logits[:, -1, :].float()
    next_position = positions[:, -1:] + 1
    rep = _repetition_penalty(settings, pad_lens, n_beams)

    # Only the first beam of each group is live at the start, else a group's beams would all be identical.
    beam_scores = torch.full((batch, n_beams), -1e9, device=device)
    beam_scores[:, ::group_size] = 0.0
    beam_scores = beam_scores.view(-1)
    generated = ids.new_zeros((batch * n_beams, 0))
    # hyps[b][g]: finished (score, token list incl. EOS) for prompt b, group g; at most group_size kept.
    hyps: list[list[list[tuple[float, list[int]]]]] = [[[] for _ in range(n_groups)] for _ in range(batch)]
    done = [[False] * n_groups for _ in range(batch)]

    def add_hyp(b: int, g: int, score: float, tokens: list[int]) -> None:
        bucket = hyps[b][g]
        bucket.append((score, tokens))
        bucket.sort(key=lambda h: h[0], reverse=True)
        del bucket[group_size:]

    for step in range(settings.max_new_tokens):
        gen_len = step + 1  # tokens a hypothesis finished now would have, its EOS included
        logprobs = torch.log_softmax(logits, dim=-1)
        if rep is not None:
            logprobs = rep(torch.cat([ids, generated], dim=1), logprobs)
        vocab = logprobs.shape[-1]
        next_tokens = torch.full((batch * n_beams,), pad_id, dtype=torch.long, device=device)
        source = torch.arange(batch * n_beams, device=device)
        # Slots left unfilled (a done group, or too many EOS candidates) must never look attractive.
        next_scores = torch.full((batch * n_beams,), -1e9, device=device)

        for g in range(n_groups):
            # Global row indices of group g's beams for every prompt: [batch, group_size].
            rows = (torch.arange(batch, device=device)[:, None] * n_beams
                    + g * group_size + torch.arange(group_size, device=device)[None, :])
            scores = logprobs[rows.view(-1)].view(batch, group_size, vocab).clone()
            if g > 0:
                earlier = next_tokens.view(batch, n_beams)[:, : g * group_size]
                freq = torch.zeros(batch, vocab, device=device)
                freq.scatter_add_(1, earlier, torch.ones_like(earlier, dtype=freq.dtype))
                scores -= settings.diversity_penalty * freq[:, None, :]
            scores = scores + beam_scores[rows.view(-1)].view(batch, group_size, 1)
            # Enough candidates that, after setting EOS ones aside, group_size continuations remain.
            n_top = min((1 + max(1, len(eos_ids))) * group_size, group_size * vocab)
            top_scores, top_idx = scores.view(batch, -1).topk(n_top, dim=1)
            for b in range(batch):
                slots = rows[b].tolist()
                if done[b][g]:
                    continue  # frozen: feeds pad, keeps its rows
                filled = 0
                for rank, (score, flat) in enumerate(zip(top_scores[b].tolist(), top_idx[b].tolist())):
                    beam, token = divmod(flat, vocab)
                    src = slots[beam]
                    if token in eos_set:
                        # An EOS outside the group's top group_size is not a good enough ending.
                        if rank < group_size:
                            add_hyp(b, g, score / gen_len, generated[src].tolist() + [token])
                        continue
                    dst = slots[filled]
                    next_tokens[dst] = token
                    source[dst] = src
                    next_scores[dst] = score
                    filled += 1
                    if filled == group_size:
                        break

        generated = torch.cat([generated[source], next_tokens[:, None]], dim=1)
        ids = ids[source]
        mask = torch.cat([mask[source], mask.new_ones((mask.shape[0], 1))], dim=1)
        beam_scores = next_scores
        cache.reorder_cache(source)

        # A group is done once it holds group_size hypotheses and no live beam can beat the worst of them.
        for b in range(batch):
            for g in range(n_groups):
                if done[b][g] or len(hyps[b][g]) < group_size:
                    continue
                start = b * n_beams + g * group_size
                best_live = beam_scores[start:start + group_size].max().item() / gen_len
                if hyps[b][g][-1][0] >= best_live:
                    done[b][g] = True
        if all(all(row) for row in done) or step == settings.max_new_tokens - 1:
            break
        out = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=next_position,
                    cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1, :].float()
        next_position = next_position + 1

    # Groups still running at the end contribute their live beams, unfinished.
    for b in range(batch):
        for g in range(n_groups):
            if done[b][g]:
                continue
            for r in range(b * n_beams + g * group_size, b * n_beams + (g + 1) * group_size):
                add_hyp(b, g, beam_scores[r].item() / max(generated.shape[1], 1), generated[r].tolist())

    chosen: list[list[int]] = []
    for b in range(batch):
        ranked = sorted((h for group in hyps[b] for h in group), key=lambda h: h[0], reverse=True)
        chosen.extend(tokens for _, tokens in ranked[:k])
    width = max(len(t) for t in chosen)
    result = torch.full((len(chosen), width), pad_id, dtype=torch.long)
    for i, tokens in enumerate(chosen):
        result[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return result
