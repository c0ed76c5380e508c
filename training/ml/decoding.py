"""Greedy and sampled decoding in our own loop over the model: the fast engine behind ``generate_batch``.

``model.generate`` spent most of a CPU step on things this loop does not do (measured with cProfile on
bench/generation.py, SmolLM2-135M bf16, 16 rows):

- its cache grows by ``torch.cat`` every step, copying every layer's keys and values each time; here they
  are written into one buffer per layer allocated for the whole answer, and attention reads a view of it;
- it runs the prompt once per candidate; here each prompt runs once and its cache is copied to its k rows;
- it keeps computing rows that have finished; here they are dropped from the batch once a quarter of the
  rows are done;
- its top-p sorts the whole 49k vocabulary of every row every step, and draws from all of it; here the top
  64 tokens are enough whenever they hold ``top_p`` of the mass (else the row falls back to transformers'
  own warper): the same tokens are kept, with the same probabilities.

What each step computes is what ``generate`` computes, in the same order: the logits in float32, the
repetition penalty (prompt tokens and generated ones, padding ignored), the format guide, then for sampling
the temperature, top-p and ``torch.multinomial`` from the global generator seeded by the caller; greedy is
the argmax. Greedy output is therefore the same as the ``generate`` engine's; sampled output follows the same
distribution, but not the same random draws once rows are dropped.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import TYPE_CHECKING, Callable, Iterator

from transformers.cache_utils import Cache, DynamicLayer

from .guide import FormatGuide, Vocabulary

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

TOP_P_CANDIDATES = 64  # tokens sorted per row for top-p; rows whose top 64 hold < top_p are sorted in full
COMPACT_WHEN_DONE = 0.25  # drop finished rows once this share of the batch has finished
THREADS_ENV = "COMPX_TORCH_THREADS"  # fixes the CPU threads of a decode, e.g. on a machine of its own
REPORT_EVERY_S = 1.0  # how often ``on_tokens`` hears the tokens written: a page moves while one batch decodes

TokensCallback = Callable[[int], None]  # tokens written so far (each row's EOS counted, its padding not)

_last_run = (0, 0.0)  # (threads, monotonic end) of this process's last CPU decode: its share of the load


def cpu_threads() -> int:
    """Threads for a CPU decode: the cores that the other processes leave free by the load average, >= 1.

    torch's threads wait for one another at every matrix product, so on a shared machine one thread that the
    scheduler pauses stalls them all: on two cores at load 18, SmolLM2 decoded 3.2 tokens/s with 2 threads
    and 47.6 with 1. This process's own last decode is taken out of the 1-minute load, as it decays.
    """
    fixed = os.environ.get(THREADS_ENV)
    if fixed:
        try:
            return max(1, int(fixed))
        except ValueError:
            raise ValueError(f"{THREADS_ENV}: must be a whole number of threads (got {fixed!r})") from None
    cores = os.cpu_count() or 1
    threads, ended = _last_run
    own = threads * math.exp(-(time.monotonic() - ended) / 60) if threads else 0.0
    others = max(0.0, os.getloadavg()[0] - own)
    return max(1, min(cores, round(cores - others)))


@contextlib.contextmanager
def _cpu_threads(device: "torch.device") -> Iterator[None]:
    import torch

    global _last_run
    if device.type != "cpu":
        yield
        return
    before, threads = torch.get_num_threads(), cpu_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _last_run = (threads, time.monotonic())


class _BufferLayer(DynamicLayer):
    """One layer's keys and values in a buffer sized for prompt + answer; attention reads the filled part."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: "torch.Tensor", value_states: "torch.Tensor") -> None:
        batch, heads, _, dim = key_states.shape
        self.device = key_states.device
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, dim))
        self.value_buffer = value_states.new_empty((batch, value_states.shape[1], self.capacity,
                                                    value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"decoding cache full: {end} positions needed, {self.capacity} allocated")
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
        self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
        self._views()

    def batch_select_indices(self, indices: "torch.Tensor") -> None:
        self.key_buffer = self.key_buffer.index_select(0, indices)
        self.value_buffer = self.value_buffer.index_select(0, indices)
        self._views()


def _new_cache(model: "PreTrainedModel", capacity: int) -> Cache:
    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[_BufferLayer(capacity) for _ in range(layers)])


def sample(scores: "torch.Tensor", top_p: float) -> "torch.Tensor":
    """One token per row from softmax(scores) cut to top-p, as transformers' TopPLogitsWarper + multinomial.

    A token is kept iff the tokens ranked above it hold less than ``top_p`` of the probability, so when a
    row's top ``TOP_P_CANDIDATES`` tokens already hold ``top_p`` no other token can be kept and the draw is
    made among those (sorting and drawing from the whole vocabulary cost more than the model's step). Other
    rows go through transformers' own warper.
    """
    import torch
    from transformers import TopPLogitsWarper

    tokens = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
    count = min(TOP_P_CANDIDATES, scores.shape[-1])
    probs = scores.softmax(dim=-1)
    top, index = probs.topk(count, dim=-1)
    narrow = top.sum(dim=-1) >= top_p if top_p < 1.0 else torch.zeros_like(tokens, dtype=torch.bool)
    if narrow.any():
        top, index = top[narrow], index[narrow]
        kept = (top.cumsum(dim=-1) - top) < top_p
        kept[:, 0] = True  # min_tokens_to_keep=1
        choice = torch.multinomial(top.masked_fill(~kept, 0.0), num_samples=1)
        tokens[narrow] = index.gather(1, choice).squeeze(1)
    wide = ~narrow
    if wide.any():
        wide_scores = scores[wide] if top_p >= 1.0 else TopPLogitsWarper(top_p=top_p)(None, scores[wide])
        tokens[wide] = torch.multinomial(wide_scores.softmax(dim=-1), num_samples=1).squeeze(1)
    return tokens


class _Penalty:
    """transformers' RepetitionPenaltyLogitsProcessor over a per-row 'seen' mask kept up to date step by step."""

    def __init__(self, penalty: float, input_ids: "torch.Tensor", attention_mask: "torch.Tensor", width: int):
        import torch

        self.penalty = penalty
        # Padding maps to an extra column that is dropped, as transformers does with prompt_ignore_length.
        ids = input_ids.masked_fill(attention_mask == 0, width)
        seen = torch.zeros((input_ids.shape[0], width + 1), dtype=torch.bool, device=input_ids.device)
        self.seen = seen.scatter_(1, ids, True)[:, :width].contiguous()

    def __call__(self, scores: "torch.Tensor") -> "torch.Tensor":
        import torch

        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(self.seen, penalised, scores)

    def add(self, tokens: "torch.Tensor") -> None:
        self.seen.scatter_(1, tokens[:, None], True)


def decode(
    model: "PreTrainedModel",
    input_ids: "torch.Tensor",
    attention_mask: "torch.Tensor",
    *,
    num_return: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    eos_ids: list[int],
    pad_id: int,
    guide_vocabulary: Vocabulary | None = None,
    on_tokens: TokensCallback | None = None,
    report_every_s: float | None = None,
) -> "torch.Tensor":
    """Decode ``num_return`` rows per left-padded prompt; return generated ids [prompts * num_return, T].

    Rows are in generate's order (prompt 0's rows first). A row that ended has its EOS and then ``pad_id``;
    T is the number of steps until every row ended or ``max_new_tokens``. ``temperature == 0`` is greedy.
    The caller seeds torch's global generator, as for ``generate``. On CPU it runs on :func:`cpu_threads`.
    ``on_tokens(written)`` is called at most every ``report_every_s`` (REPORT_EVERY_S) during the decode and once
    at its end.
    """
    every_s = REPORT_EVERY_S if report_every_s is None else report_every_s
    report = _Report(on_tokens, every_s) if on_tokens is not None else None
    with _cpu_threads(input_ids.device):
        return _decode(model, input_ids, attention_mask, num_return, max_new_tokens, temperature, top_p,
                       repetition_penalty, eos_ids, pad_id, guide_vocabulary, report)


class _Report:
    """Counts the tokens written step by step and tells ``on_tokens`` at most every ``every_s`` seconds."""

    def __init__(self, on_tokens: TokensCallback, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.on_tokens, self.every_s, self.clock = on_tokens, every_s, clock
        self.written = 0
        self.last = clock()

    def step(self, writing: int, final: bool = False) -> None:
        """``writing`` rows wrote a token this step (finished rows only pad)."""
        self.written += writing
        if final or self.clock() - self.last >= self.every_s:
            self.last = self.clock()
            self.on_tokens(self.written)


def _decode(model, input_ids, attention_mask, num_return, max_new_tokens, temperature, top_p, repetition_penalty,
            eos_ids, pad_id, guide_vocabulary, report=None):
    import torch

    prompts, prompt_length = input_ids.shape
    rows = prompts * num_return
    device = input_ids.device
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = _new_cache(model, prompt_length + max_new_tokens)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, cache=cache,
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].float().repeat_interleave(num_return, dim=0)
    del out
    cache.batch_repeat_interleave(num_return)

    mask = torch.ones((rows, prompt_length + max_new_tokens), dtype=attention_mask.dtype, device=device)
    mask[:, :prompt_length] = attention_mask.repeat_interleave(num_return, dim=0)
    next_position = positions[:, -1:].repeat_interleave(num_return, dim=0) + 1
    width = logits.shape[-1]
    penalty = None
    if repetition_penalty != 1.0:
        penalty = _Penalty(float(repetition_penalty), input_ids.repeat_interleave(num_return, dim=0),
                           mask[:, :prompt_length], width)
    guide = FormatGuide(guide_vocabulary, prompt_length, max_new_tokens) if guide_vocabulary else None
    eos = torch.tensor(eos_ids, device=device)
    generated = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long)
    live = torch.arange(rows, device=device)  # the original row of each row still in the batch
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    last: list[int] | None = None
    steps = 0
    for step in range(max_new_tokens):
        scores = logits if penalty is None else penalty(logits)
        if guide is not None:
            scores = guide.apply(scores, last, max_new_tokens - step)
        if temperature > 0:
            tokens = sample(scores / temperature, top_p)
        else:
            tokens = scores.argmax(dim=-1)
        tokens = tokens.masked_fill(done, pad_id)  # a finished row only pads, as in generate
        generated[live.cpu(), step] = tokens.cpu()
        steps = step + 1
        writing = int((~done).sum()) if report is not None else 0
        done |= torch.isin(tokens, eos)
        finished = bool(done.all()) or steps == max_new_tokens
        if report is not None:
            report.step(writing, final=finished)
        if finished:
            break
        if done.float().mean().item() >= COMPACT_WHEN_DONE:
            keep = (~done).nonzero().flatten()
            live, tokens, done = live[keep], tokens[keep], done[keep]
            mask, next_position = mask[keep], next_position[keep]
            cache.batch_select_indices(keep)
            if penalty is not None:
                penalty.seen = penalty.seen[keep]
            if guide is not None:
                guide.keep_rows(keep.tolist())
        last = tokens.tolist()
        if penalty is not None:
            penalty.add(tokens)
        length = prompt_length + step + 1
        out = model(input_ids=tokens[:, None], attention_mask=mask[:, :length], position_ids=next_position,
                    cache=cache, use_cache=True)
        logits = out.logits[:, -1].float()
        del out
        next_position = next_position + 1
    return generated[:, :steps]
