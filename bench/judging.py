"""Judging throughput against a real OpenAI-compatible server: concurrent vs sequential requests.

    .venv/bin/python bench/judging.py [--comparisons 6] [--concurrency 6] [--max-tokens 32] [--no-continuous-batching]
    .venv/bin/python bench/judging.py --smoke    # CI: 1 comparison, 8 tokens, concurrency 2

Starts `transformers serve` on the offline model (SmolLM2-135M-Instruct, CPU) on 127.0.0.1, builds judge
prompts for made-up comparisons, and judges every comparison in both orders through the same backend the
judging jobs use (``annotation.judging.backends.OpenAIJudgeBackend``: a thread pool limited by the judge's
concurrency, the openai client with its retries) — once with concurrency 1, once with ``--concurrency``.
Nothing is written to the database. Prints judged comparisons per second for both and the ratio.

By default the server runs with ``--continuous-batching`` so that concurrent requests share the model's
forward passes, with a small paged KV cache (CB_FLAGS): with its defaults on CPU the server reserved
~13 GB and requests timed out. Without continuous batching, concurrent requests on CPU were measured no
faster than sequential ones (they compete for the same cores).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "compx_site.settings")

ABSTRACTS = [
    ("Graph neural networks for protein structure refinement",
     "We present a message-passing network that refines predicted protein backbones by iteratively updating "
     "residue frames, improving the median GDT-TS of predictions by 2.1 points on CASP15 targets."),
    ("Weak-lensing masses of galaxy clusters",
     "We infer cluster masses from shear catalogues with a hierarchical Bayesian model of miscentring and "
     "photometric redshift errors, tightening constraints on sigma_8."),
    ("Nitrogen fixation in legume root nodules",
     "Over three seasons we measured symbiotic nitrogen fixation in pea and faba bean at twelve field sites "
     "and profiled nodule microbiomes; fixation declined with summer drought."),
    ("A speech recogniser for Swiss German dialects",
     "We fine-tune a self-supervised acoustic model on 80 hours of dialect speech; word error rate drops from "
     "41% to 27% on held-out speakers."),
]
COMPETENCIES = [
    ("Geometric deep learning", "message-passing networks on residue frames"),
    ("Bayesian modelling", "hierarchical models of systematic errors"),
    ("Field ecology", "multi-site, multi-season measurements"),
    ("Speech recognition", "fine-tuning self-supervised acoustic models"),
    ("Research", "does research"),
    ("Python programming", "writes code"),
]


def profile(i: int) -> str:
    picked = [COMPETENCIES[(i + k) % len(COMPETENCIES)] for k in range(3)]
    lines = "\n".join(f"- {name}: {how} (candidate {i})." for name, how in picked)
    return f'Domain: "Research profile {i}"\n\nCompetencies:\n{lines}'


def prompts(first: int, n: int) -> list[list[dict]]:
    """Both presentation orders of comparisons first … first + n − 1, every prompt different.

    Each comparison gets its own pair of abstracts and its own profiles, so that no run is helped by a
    server-side prefix cache warmed by the other run.
    """
    from annotation.prompts import build_judge_messages

    conversations = []
    for i in range(first, first + n):
        abstracts = [ABSTRACTS[i % 4], ABSTRACTS[(i + 1 + i // 4) % 4]]
        if abstracts[0] == abstracts[1]:
            abstracts = abstracts[:1]
        a, b = profile(2 * i), profile(2 * i + 1)
        conversations += [build_judge_messages(abstracts, a, b), build_judge_messages(abstracts, b, a)]
    return conversations


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# 256 blocks of 32 tokens: room for ~16 judge prompts of ~500 tokens in flight, ~1 GB in all.
CB_FLAGS = ["--continuous-batching", "--cb-num-blocks", "256", "--cb-block-size", "32", "--cb-max-batch-tokens", "2048"]


def start_server(model_dir: Path, port: int, continuous_batching: bool, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu"]
    if continuous_batching:
        command += CB_FLAGS
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"transformers serve exited:\n{log.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200:
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("transformers serve did not become healthy within 180 s")


def judge_all(backend, conversations) -> tuple[float, int, int]:
    """Seconds for all requests, how many answers were valid, completion tokens."""
    started = time.perf_counter()
    results = [result for _, result in backend.run(conversations)]
    seconds = time.perf_counter() - started
    valid = sum(getattr(r, "verdict", None) is not None and r.verdict.valid for r in results)
    tokens = sum(getattr(r, "completion_tokens", 0) or 0 for r in results)
    failed = [str(r) for r in results if not hasattr(r, "verdict")]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed: {failed[0]}")
    return seconds, valid, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=6, help="comparisons per run, 2 requests each (default 6)")
    parser.add_argument("--concurrency", type=int, default=6, help="requests in flight in the concurrent run")
    parser.add_argument("--max-tokens", type=int, default=32, help="max tokens per answer (default 32)")
    parser.add_argument("--no-continuous-batching", action="store_true", help="serve without continuous batching")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="CI size: --comparisons 1 --max-tokens 8 --concurrency 2")
    args = parser.parse_args()
    if args.smoke:
        args.comparisons, args.max_tokens, args.concurrency = 1, 8, 2
    # A SIGTERM (e.g. from `timeout`) must still stop the server in the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import django

    django.setup()
    import logging

    for noisy in ("httpx", "httpx2"):  # one line per request drowns the result; retries still show
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from django.conf import settings

    from annotation.judging.backends import OpenAIJudgeBackend
    from annotation.models import Backend, Judge
    from training.ml.models import default_model_dir

    model_dir = default_model_dir(settings.MODEL_CACHE_DIR)
    port = free_port()
    batching = not args.no_continuous_batching
    log = settings.VAR_DIR / "bench-judging-server.log"
    t0 = time.perf_counter()
    server = start_server(model_dir, port, batching, log)
    print(f"server: transformers serve {model_dir.name} on CPU, continuous batching {'on' if batching else 'off'}, "
          f"ready in {time.perf_counter() - t0:.0f}s (log: {log})")
    try:
        def backend(concurrency: int):
            judge = Judge(name=f"bench-{concurrency}", backend=Backend.OPENAI, model=str(model_dir),
                          base_url=f"http://127.0.0.1:{port}/v1", max_tokens=args.max_tokens, temperature=0,
                          concurrency=concurrency)
            return OpenAIJudgeBackend(judge)

        judge_all(backend(1), prompts(10_000, 1))  # warm-up: first-request costs are paid by nobody
        print(f"{args.comparisons} comparisons x 2 orders = {2 * args.comparisons} requests per run, different "
              f"prompts in each run; max_tokens {args.max_tokens}")
        conversations = prompts(0, args.comparisons)
        seq_s, seq_valid, seq_tokens = judge_all(backend(1), conversations)
        seq_rate = args.comparisons / seq_s
        print(f"sequential (concurrency 1): {seq_s:.1f}s = {seq_rate:.3f} comparisons/s "
              f"({seq_tokens / seq_s:.1f} tok/s, {seq_valid}/{len(conversations)} answers valid JSON verdicts)")
        conversations = prompts(args.comparisons, args.comparisons)
        con_s, con_valid, con_tokens = judge_all(backend(args.concurrency), conversations)
        con_rate = args.comparisons / con_s
        print(f"concurrent (concurrency {args.concurrency}): {con_s:.1f}s = {con_rate:.3f} comparisons/s "
              f"({con_tokens / con_s:.1f} tok/s, {con_valid}/{len(conversations)} answers valid JSON verdicts)")
        print(f"ratio (concurrent / sequential): {con_rate / seq_rate:.2f}x")
        if args.json:
            args.json.write_text(json.dumps({
                "comparisons": args.comparisons, "requests": 2 * args.comparisons, "max_tokens": args.max_tokens,
                "continuous_batching": batching, "concurrency": args.concurrency,
                "sequential": {"seconds": seq_s, "comparisons_per_s": seq_rate, "tokens": seq_tokens},
                "concurrent": {"seconds": con_s, "comparisons_per_s": con_rate, "tokens": con_tokens},
                "ratio": con_rate / seq_rate,
            }, indent=2))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
