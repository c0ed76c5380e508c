"""One way to talk to OpenAI-compatible chat endpoints (OpenAI, vLLM, Ollama, llama.cpp, `transformers serve`).

Generators and judges both come through here: the key is read from a named environment variable, requests
time out, 429 and 5xx answers are retried with exponential backoff by the `openai` client itself, and every
failure is translated into one sentence that says what to fix.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import openai

# Enough for a 135M model on two CPU cores to write a profile; slow servers can raise it per call.
DEFAULT_TIMEOUT_S = 120.0
# The client waits 0.5 s, 1 s, 2 s … (with jitter) between tries on 408/409/429/5xx and connection errors.
DEFAULT_RETRIES = 3


class EndpointError(Exception):
    """A failure the admin must fix (wrong URL, model or key); retrying the same request cannot help."""


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int
    truncated: bool = False  # stopped by max_tokens, not by the model


def make_client(base_url: str, api_key_env: str = "", timeout: float = DEFAULT_TIMEOUT_S,
                retries: int = DEFAULT_RETRIES) -> openai.OpenAI:
    if api_key_env and not os.environ.get(api_key_env):
        raise EndpointError(f"the environment variable {api_key_env} that should hold the API key is not set")
    # Local servers (transformers serve, llama.cpp) want no key, but the client insists on one.
    api_key = os.environ.get(api_key_env, "") if api_key_env else "unused"
    return openai.OpenAI(base_url=base_url or None, api_key=api_key, timeout=timeout, max_retries=retries)


def chat(client: openai.OpenAI, model: str, messages: list[dict], *, temperature: float, max_tokens: int,
         top_p: float | None = None) -> ChatResult:
    started = time.monotonic()
    extra = {"top_p": top_p} if top_p is not None else {}
    try:
        response = client.chat.completions.create(
            model=model, messages=messages, temperature=temperature, max_tokens=max_tokens, **extra
        )
    except openai.APIError as exc:
        raise translate_error(exc, client, model) from exc
    latency_ms = int((time.monotonic() - started) * 1000)
    text = (response.choices[0].message.content or "") if response.choices else ""
    truncated = bool(response.choices) and response.choices[0].finish_reason == "length"
    usage = response.usage
    return ChatResult(text, usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
                      latency_ms, truncated)


def translate_error(exc: openai.APIError, client: openai.OpenAI, model: str) -> Exception:
    """Configuration mistakes become EndpointError with a plain sentence; anything else is re-raised as is."""
    where = str(client.base_url)
    if isinstance(exc, openai.APITimeoutError):
        return EndpointError(f"{where} did not answer within {client.timeout} s (after retries)")
    if isinstance(exc, openai.APIConnectionError):
        return EndpointError(f"cannot reach {where}: is the server running and the base URL right?")
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return EndpointError(f"{where} rejected the API key ({exc.status_code}): check the key variable")
    if isinstance(exc, openai.NotFoundError):
        return EndpointError(f"{where} has no model {model!r} or no chat endpoint (404)")
    if isinstance(exc, openai.BadRequestError):
        return EndpointError(f"{where} refused the request for model {model!r} (400): {exc.message}")
    if isinstance(exc, openai.RateLimitError):
        return EndpointError(f"{where} kept answering 429 (rate limit) after {client.max_retries} retries")
    if isinstance(exc, openai.APIStatusError):
        return EndpointError(f"{where} failed with {exc.status_code} after {client.max_retries} retries")
    return exc
