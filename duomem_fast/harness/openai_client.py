"""A small OpenAI-compatible chat client on the standard library: timeouts, retries with backoff, a rate limit.

Works with vLLM, SGLang, llama.cpp server, hosted APIs and `duomem-fast serve`.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(slots=True)
class ClientConfig:
    base_url: str                      # e.g. http://127.0.0.1:8000/v1
    model: str | None = None           # None: the first id from GET /models
    api_key: str | None = None         # None: $OPENAI_API_KEY if set
    timeout: float = 60.0              # seconds per HTTP attempt
    max_retries: int = 4
    backoff: float = 0.5               # first retry delay in seconds, doubled each retry (with jitter)
    rate: float = 0.0                  # max requests per second across threads; 0 = unlimited

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        self.base_url = self.base_url.rstrip("/")
        for name in ("timeout", "backoff", "rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries!r}")
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY")


class APIError(RuntimeError):
    """The endpoint answered with an error we do not retry, or retries ran out."""


class OpenAIClient:
    """Thread-safe client: `chat(messages, **params) -> (text, usage, seconds)`."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self._lock = threading.Lock()
        self._next_slot = 0.0
        if config.model is None:
            config.model = self.models()[0]

    def models(self) -> list[str]:
        data = self._request("GET", "/models", None)
        ids = [m["id"] for m in data.get("data", [])]
        if not ids:
            raise APIError(f"{self.config.base_url}/models lists no models; pass model=NAME")
        return ids

    def chat(self, messages: list[dict], **params) -> tuple[str, dict, float]:
        body = {"model": self.config.model, "messages": messages, **params}
        t0 = time.perf_counter()
        data = self._request("POST", "/chat/completions", body)
        seconds = time.perf_counter() - t0
        try:
            text = data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise APIError(f"malformed chat completion from {self.config.base_url}: {str(data)[:200]}") from None
        return text, data.get("usage") or {}, seconds

    def _wait_rate(self) -> None:
        if self.config.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.config.rate
        time.sleep(max(0.0, slot - now))

    def _request(self, method: str, path: str, body: dict | None) -> dict:
        url = self.config.base_url + path
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        payload = None if body is None else json.dumps(body).encode()
        last = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                delay = self.config.backoff * 2 ** (attempt - 1)
                time.sleep(delay * (0.5 + random.random()))
            self._wait_rate()
            req = urllib.request.Request(url, data=payload, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:300].decode(errors='replace')}"
                if e.code not in RETRY_STATUS:
                    raise APIError(f"{method} {url} -> {last}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
        raise APIError(f"{method} {url} failed after {self.config.max_retries + 1} attempts; last: {last}")
