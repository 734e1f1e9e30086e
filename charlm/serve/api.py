"""The completions API's request checking and response shapes (OpenAI's, counted in characters).

Everything a client can get wrong becomes an ``ApiError`` that names the field; nothing here
touches the model, so each rule is testable on its own.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from dataclasses import dataclass, field

from charlm.data.vocab import CharVocab
from charlm.generation.sampling import SampleSettings

# Fields OpenAI's completions accept that charlm honours, or accepts at their neutral value.
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream",
         "logprobs", "top_k", "greedy", "best_of", "echo", "logit_bias", "suffix", "user",
         "presence_penalty", "frequency_penalty", "stream_options"}
MAX_LOGPROBS = 5  # OpenAI's own cap on alternatives per token


@dataclass
class Limits:
    """What one request may ask of this server (the ``charlm serve`` flags)."""

    max_tokens: int = 2048  # characters per choice
    max_n: int = 16
    max_prompt: int = 4096  # characters
    max_batch: int = 64     # rows generated together; a request with n choices takes n rows
    max_queue: int = 256    # requests waiting for rows before the server answers 503


class ApiError(Exception):
    """An error response: ``{"error": {"message", "type", "param", "code"}}`` with a status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (status, message, param,
                                                                       code, kind)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass
class Completion:
    """A checked completion request."""

    prompt: str
    prompt_ids: list[int]
    settings: SampleSettings
    max_tokens: int = 16
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    logprobs: int | None = None
    include_usage: bool = False


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


def _number(body: dict, name: str, default: float | None, lo: float, hi: float) -> float | None:
    """A finite number in [lo, hi], or the default when absent or null."""
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, f"{name} must be a number, not {v!r}")
    if not lo <= v <= hi:
        raise _bad(name, f"{name} must be between {lo:g} and {hi:g}, not {v!r}")
    return float(v)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int | None = None,
             limit: str = "") -> int | None:
    """An integer in [lo, hi], or the default when absent or null."""
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"{name} must be an integer, not {v!r}")
    if v < lo or (hi is not None and v > hi):
        most = f" (this server's limit{limit})" if limit else ""
        raise _bad(name, f"{name} must be between {lo} and {hi}{most}, not {v}")
    return v


def _flag(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _bad(name, f"{name} must be true or false, not {v!r}")
    return v


def _refuse_unsupported(body: dict) -> None:
    """Fields charlm cannot honour with the value given: 400 naming the field."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise _bad(unknown[0], f"unknown field {unknown[0]!r} (charlm serves plain completions)",
                   "unknown_field")
    if body.get("best_of") not in (None, 1):
        raise _bad("best_of", "best_of > 1 is not supported: ask for n samples instead",
                   "unsupported_value")
    for name, neutral in [("echo", (None, False)), ("suffix", (None, "")),
                          ("presence_penalty", (None, 0)), ("frequency_penalty", (None, 0))]:
        if body.get(name) not in neutral:
            raise _bad(name, f"{name} is not supported by charlm", "unsupported_value")
    if body.get("logit_bias") not in (None, {}):
        raise _bad("logit_bias", "logit_bias is not supported by charlm", "unsupported_value")


def _prompt(body: dict, vocab: CharVocab, limits: Limits) -> tuple[str, list[int]]:
    """The prompt (a string, or a list of one string) and its ids; unknown characters named."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise _bad("prompt", "prompt must be a string (or a list of one string)")
    if len(prompt) > limits.max_prompt:
        raise _bad("prompt", f"prompt is {len(prompt)} characters; this server's limit is "
                             f"{limits.max_prompt}", "prompt_too_long")
    # a dict per character: a prompt is short, and the vectorised encode's fixed cost is not
    ids = list(map(vocab.index.get, prompt))
    if None in ids:
        names = ", ".join(repr(c) for c in vocab.unknown_chars(prompt)[:10])
        raise _bad("prompt", f"the prompt has characters the model never saw: {names}",
                   "unknown_characters")
    return prompt, ids


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or len(stop) > 4
            or not all(isinstance(s, str) and s for s in stop)):
        raise _bad("stop", "stop must be a non-empty string or a list of up to 4 of them")
    return stop


def parse_completion(body, model_name: str, vocab: CharVocab, limits: Limits) -> Completion:
    """Check a /v1/completions body → Completion, or raise ApiError naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    if body.get("model") is None:
        raise _bad("model", f"model is required (this server has {model_name!r})",
                   "missing_required_parameter")
    if body.get("model") != model_name:
        raise ApiError(404, f"the model {body.get('model')!r} does not exist; this server has "
                            f"{model_name!r}", "model", "model_not_found")
    _refuse_unsupported(body)
    prompt, ids = _prompt(body, vocab, limits)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed", f"seed must be an integer, not {seed!r}")
    logprobs = body.get("logprobs")
    logprobs = None if logprobs is None or logprobs is False else logprobs
    if logprobs is not None:
        logprobs = _integer({"logprobs": logprobs}, "logprobs", None, 0, MAX_LOGPROBS)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "stream_options must be an object")
    temperature = _number(body, "temperature", 1.0, 0.0, 100.0)
    top_p = _number(body, "top_p", None, 0.0, 1.0)
    if top_p == 0.0:
        raise _bad("top_p", "top_p must be above 0")
    settings = SampleSettings(temperature, _integer(body, "top_k", None, 1), top_p,
                              _flag(body, "greedy"))
    return Completion(
        prompt, ids, settings,
        max_tokens=_integer(body, "max_tokens", 16, 0, limits.max_tokens, " --max-tokens"),
        n=_integer(body, "n", 1, 1, limits.max_n, " --max-n"), seed=seed, stop=_stop(body),
        stream=_flag(body, "stream"), logprobs=logprobs,
        include_usage=bool(options.get("include_usage")))


_ID_PREFIX = secrets.token_hex(6)  # this process's; ids need only be unique, not secret
_ids = itertools.count()


def completion_id() -> str:
    """A new completion's id, ``cmpl-`` and 24 hex digits (no system call per request, as
    uuid4's was, on the event loop's path)."""
    return f"cmpl-{_ID_PREFIX}{next(_ids) % (1 << 48):012x}"


def choice(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def logprobs_block(entries: list, offset: int) -> dict:
    """OpenAI's completions logprobs for characters: tokens, token_logprobs, top_logprobs,
    text_offset (from the start of the completion)."""
    return {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
            "top_logprobs": [e[2] for e in entries],
            "text_offset": list(range(offset, offset + len(entries)))}


def envelope(cid: str, model: str, choices: list[dict], usage: dict | None = None) -> dict:
    """A completion (or one streamed chunk of it)."""
    out = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def usage(prompt: str, completion_chars: int) -> dict:
    """Usage in characters (charlm's tokens are characters)."""
    return {"prompt_tokens": len(prompt), "completion_tokens": completion_chars,
            "total_tokens": len(prompt) + completion_chars}
