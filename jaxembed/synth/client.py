"""Chat completions against OpenAI-compatible servers: bounded concurrency, a request-rate
cap, timeouts, and retries with exponential backoff and jitter.

A request that fails for a reason worth retrying (no connection, timeout, HTTP 408, 409,
429, 5xx, a 200 that is not a chat completion) is retried `retries` times; when those run
out the endpoint is taken as down (`EndpointFailed`) and the run stops cleanly. HTTP 401,
403 and 404 (a bad key, a wrong URL or model) stop the run at once: every item would fail
the same way, and a reject is never asked again. Any other HTTP error fails only that
request (`RequestFailed`, a reject). Servers that refuse `response_format` are asked again
without it, and from then on never with it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from jaxembed.errors import UserInputError
from jaxembed.synth.endpoints import Endpoint

RETRYABLE_STATUS = (408, 409, 429)
ENDPOINT_STATUS = (401, 403, 404)  # the endpoint's settings are wrong, not this request


class _NotACompletion(Exception):
    """HTTP 200 with a body that is not a chat completion (a proxy's page, a broken server)."""


@dataclass(frozen=True)
class ClientSettings:
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 1.0  # the first retry's delay; doubling, with full jitter
    max_backoff_s: float = 30.0
    requests_per_second: float = 0.0  # 0 = no cap
    max_tokens: int = 512
    temperature: float = 0.8
    json_mode: bool = True  # ask for response_format={"type": "json_object"}


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    retries: int
    finish_reason: str = ""  # "length": cut off at max_tokens


class RequestFailed(Exception):
    """This request cannot succeed (e.g. HTTP 400): a reject, the run goes on."""


class EndpointFailed(Exception):
    """The endpoint kept failing through every retry: the run stops."""

    def __init__(self, endpoint: Endpoint, reason: str):
        super().__init__(f"{endpoint.url}: {reason}")
        self.endpoint = endpoint
        self.reason = reason


def describe(error: BaseException) -> str:
    """One line for an openai or network error."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "timed out"
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error.__context__
        return f"connection failed ({cause or error})".replace("\n", " ")
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {str(error.message)[:200]}".replace("\n", " ")
    if isinstance(error, _NotACompletion):
        return str(error)
    return f"{type(error).__name__}: {error}".replace("\n", " ")[:300]


def _retryable(error: BaseException) -> bool:
    import openai

    if isinstance(error, openai.APIConnectionError | _NotACompletion):  # timeouts included
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return False


class _RateCap:
    """At most `per_second` request starts a second (evenly spaced)."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        await asyncio.sleep(start - now)


def _refuses_json_mode(error: BaseException) -> bool:
    import openai

    return isinstance(
        error, openai.BadRequestError | openai.UnprocessableEntityError
    ) and "response_format" in str(error)


def _answer(response: Any) -> tuple[str, str]:
    """(text, finish_reason) of a chat completion; an empty text where the server gave
    none (a reject, by the parser). Content given as a list of parts is joined."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        raise _NotACompletion(f"HTTP 200 but not a chat completion ({str(response)[:80]!r})")
    if not choices:
        return "", ""
    choice = choices[0]
    content = getattr(getattr(choice, "message", None), "content", None)
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        content = "".join(
            (part.get("text") or "") if isinstance(part, dict) else str(part) for part in content
        )
    text = content if isinstance(content, str) else ""
    return text, str(getattr(choice, "finish_reason", None) or "")


class ChatClient:
    def __init__(self, endpoints: list[Endpoint], settings: ClientSettings, api_key: str):
        import openai

        self.settings = settings
        self.clients = {
            e.url: openai.AsyncOpenAI(
                base_url=e.url, api_key=api_key, timeout=settings.timeout_s, max_retries=0
            )
            for e in endpoints
        }
        self.models: dict[str, str] = {}  # endpoint name -> model (a server may serve several)
        self.no_json_mode: set[str] = set()
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.rate = _RateCap(settings.requests_per_second)
        self.jitter = random.Random(0)

    async def check(self, endpoints: list[Endpoint]) -> None:
        """Every endpoint answers and serves a model (the first it lists, unless named; a
        named one is trusted where the server has no /models): one line naming the URL
        otherwise, before any work starts."""
        for e in endpoints:
            try:
                listed = [m.id async for m in self.clients[e.url].models.list()]
            except Exception as error:  # noqa: BLE001 - reported as the endpoint's fault
                if getattr(error, "status_code", None) == 404:
                    if e.model:
                        self.models[e.name] = e.model  # it answers, but lists no models
                        continue
                    raise UserInputError(
                        f"--endpoint {e.url}: no model list (HTTP 404 on /models): is the "
                        "URL right (it usually ends in /v1)? If so, give model=NAME"
                    ) from None
                reason = describe(error)
                raise UserInputError(f"--endpoint {e.url}: unreachable ({reason})") from None
            if e.model and listed and e.model not in listed:
                raise UserInputError(
                    f"--endpoint {e.url}: model {e.model!r} is not served (it lists "
                    f"{', '.join(listed[:5])})"
                )
            if not e.model and not listed:
                raise UserInputError(f"--endpoint {e.url}: lists no model; give model=NAME")
            self.models[e.name] = e.model or listed[0]

    async def complete(self, endpoint: Endpoint, prompt: str) -> Completion:
        s = self.settings
        attempt = 0
        while True:
            json_mode = s.json_mode and endpoint.url not in self.no_json_mode
            try:
                async with self.slots:
                    await self.rate.wait()
                    response = await self._request(endpoint, prompt, json_mode)
                    text, finish_reason = _answer(response)
                break
            except Exception as error:  # noqa: BLE001 - sorted into retry, reject or stop
                if json_mode and _refuses_json_mode(error):
                    self.no_json_mode.add(endpoint.url)  # and this request is asked again
                    continue
                if getattr(error, "status_code", None) in ENDPOINT_STATUS:
                    raise EndpointFailed(endpoint, describe(error)) from None
                if not _retryable(error):
                    raise RequestFailed(describe(error)) from None
                if attempt >= s.retries:
                    reason = f"{describe(error)}, after {attempt} retries"
                    raise EndpointFailed(endpoint, reason) from None
                delay = min(s.max_backoff_s, s.backoff_s * 2**attempt)
                attempt += 1
                await asyncio.sleep(self.jitter.uniform(0, delay))
        usage = getattr(response, "usage", None)
        return Completion(
            text=text,
            model=self.models[endpoint.name],
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            retries=attempt,
            finish_reason=finish_reason,
        )

    async def _request(self, endpoint: Endpoint, prompt: str, json_mode: bool) -> Any:
        s = self.settings
        extra = {}
        if json_mode:
            extra["response_format"] = {"type": "json_object"}
        return await self.clients[endpoint.url].chat.completions.create(
            model=self.models[endpoint.name],
            messages=[{"role": "user", "content": prompt}],
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            **extra,
        )

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
