"""Request bodies of the OpenAI-compatible endpoints, and OpenAI-style errors.

Bodies are validated strictly (``"5"`` is not an integer, ``true`` is not a
number) and unknown fields are refused, so a typo such as ``"mdoe"`` is an
error naming the field instead of being silently ignored. The trimode
extensions ``mode``, ``block_length``, ``threshold``, ``top_k`` and ``trace`` are
plain body fields: what the ``openai`` client sends with ``extra_body``. Chat contents may hold
OpenAI's ``image_url`` parts (checked further by the server: ``data:`` URLs only, a VLM only).

OpenAI fields this server cannot honour are accepted only at their neutral
value (``n: 1``, ``echo: false``, ``logprobs: null``, zero penalties, ...);
anything else is a 400 naming the field (see :func:`unsupported`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from .config import REQUEST_MODES

ModeName = Literal[REQUEST_MODES]  # type: ignore[valid-type]
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|[A-Z]\w*)$")
_MEMBER = re.compile(r"^[A-Z]\w*$")  # a union member that is a model, named by its class


class APIError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.param, self.type, self.code)


def error_body(message: str, param: str | None = None, type: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --------------------------------------------------------------------------- field types
def _prompt(value: Any) -> str | list[str] | list[int] | list[list[int]]:
    """One prompt (text or token ids) or a list of them."""
    def ids(v: Any) -> bool:
        return isinstance(v, list) and len(v) > 0 and all(type(t) is int for t in v)

    if isinstance(value, str) or ids(value):
        return value
    if isinstance(value, list) and value and (all(isinstance(v, str) for v in value) or all(ids(v) for v in value)):
        return value
    raise ValueError("must be a string, a non-empty list of strings, a non-empty list of token ids, "
                     "or a non-empty list of non-empty token-id lists")


def _stop(value: Any) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value):
        return value
    raise ValueError("must be null, a string, or a list of at most 4 strings")


_TOKEN_IDS = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
Prompt = Annotated[Any, PlainValidator(_prompt), WithJsonSchema({"anyOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}, _TOKEN_IDS,
    {"type": "array", "items": _TOKEN_IDS, "minItems": 1}]})]
Stop = Annotated[Any, PlainValidator(_stop), WithJsonSchema({"anyOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}, {"type": "null"}]})]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _Sampling(_Strict):
    """Fields shared by both endpoints."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="trimode extension: keep the k most likely tokens (0 = off)")
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    mode: ModeName | None = Field(None, description="trimode extension: decoding mode (default: the server's)")
    block_length: int | None = Field(None, ge=1, description="trimode extension: block length of "
                                     "diffusion / speculation")
    threshold: float | None = Field(None, gt=0, le=1, description="trimode extension: diffusion confidence "
                                    "threshold; null = fixed schedule; absent = the server default")
    trace: bool | None = Field(None, description="trimode extension: also send what each forward did "
                               "(streaming: one `event: trace` chunk per forward, with empty `choices` and a "
                               "`trace` field; otherwise a `trace` list in the response). See "
                               "trimode.generation.trace for the event schema")


class CompletionRequest(_Sampling):
    prompt: Prompt
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(description="a data:image/<png|jpeg|webp|gif>;base64,... URL (the server fetches nothing)")
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="accepted for OpenAI clients and ignored: every image is resized to the model's "
                          "max_image_size")


class ImageURLPart(_Strict):
    """An image, inline: OpenAI's ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``."""

    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    # A plain union, not a tagged one: pydantic then names each failing member by its class, which
    # validation_error leaves out of the field path (``messages.0.content.0.type``).
    content: str | list[TextPart | ImageURLPart]
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None


def unsupported(body: _Sampling) -> None:
    """Refuse OpenAI features this server does not implement, naming the field."""
    def refuse(param: str, value: Any, allowed: str) -> None:
        raise APIError(400, f"{param}={value!r} is not supported by this server; allowed: {allowed}", param)

    if body.n not in (None, 1):
        refuse("n", body.n, "1 (send separate requests for more choices)")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0, 0.0):
            refuse(name, getattr(body, name), "0 or null")
    if body.logit_bias:
        refuse("logit_bias", body.logit_bias, "null or {}")
    if isinstance(body, CompletionRequest):
        if body.echo:
            refuse("echo", body.echo, "false")
        if body.logprobs not in (None, 0):
            refuse("logprobs", body.logprobs, "null")
        if body.best_of not in (None, 1):
            refuse("best_of", body.best_of, "1")
        if body.suffix:
            refuse("suffix", body.suffix, "null")
    if isinstance(body, ChatCompletionRequest):
        if body.logprobs:
            refuse("logprobs", body.logprobs, "false or null")
        if body.top_logprobs not in (None, 0):
            refuse("top_logprobs", body.top_logprobs, "null")


def _union_member(loc: tuple) -> tuple:
    """``loc`` up to its last union member named by a class (``TextPart``), or () when it has none."""
    for i in range(len(loc) - 1, -1, -1):
        if isinstance(loc[i], str) and _MEMBER.match(loc[i]):
            return tuple(loc[:i + 1])
    return ()


def _is_tag_error(error: dict) -> bool:
    """A union member refused the value for its ``type`` literal (a content part of another type)."""
    return error.get("type") == "literal_error" and tuple(error.get("loc", ()))[-1:] == ("type",)


def _meant(errors: list[dict]) -> list[dict]:
    """The errors of the union members the client meant: where one member's ``type`` tag matched, the
    others' errors are dropped, so an image part with a bad ``image_url`` is reported as that, not as
    "type should be 'text'". Where no member's tag matched, all are kept (the type itself is wrong)."""
    def member(e: dict) -> tuple:
        return _union_member(tuple(e.get("loc", ())))

    wrong = {member(e) for e in errors if _is_tag_error(e)}
    matched = {m[:-1] for m in {member(e) for e in errors} - wrong - {()}}  # positions a member's tag fits
    return [e for e in errors if not (member(e) in wrong and member(e)[:-1] in matched)]


def validation_error(errors: list[dict]) -> APIError:
    """FastAPI/pydantic validation errors -> one 400 naming the first bad field."""
    if not errors:
        return APIError(400, "invalid request body")
    errors = _meant(errors)
    # The deepest error is the most specific; at equal depth a wrong type tag (the others follow from it).
    e = max(errors, key=lambda err: (len(err.get("loc", ())), _is_tag_error(err)))
    loc = []
    for part in e.get("loc", ()):
        if part == "body":
            continue
        if isinstance(part, str) and _UNION_TAG.match(part):
            continue  # pydantic names union members ("str", "list[TextPart]"): not part of the field path
        loc.append(str(part))
    param = ".".join(loc) or None
    if _is_tag_error(e):  # no member took this type: name every type allowed
        expected = dict.fromkeys((err.get("ctx") or {}).get("expected", "") for err in errors if _is_tag_error(err))
        e = {**e, "msg": f"Input should be {' or '.join(x for x in expected if x)}"}
    kind = e.get("type", "")
    if kind == "json_invalid":
        detail = (e.get("ctx") or {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON ({detail})".replace(" ()", ""))
    if param is None:
        if kind == "missing":
            return APIError(400, "the request body is missing: send a JSON object")
        return APIError(400, f"the request body must be a JSON object, got {type(e.get('input')).__name__}")
    if kind == "extra_forbidden":
        return APIError(400, f"{param}: unknown parameter; see GET /docs for the accepted fields", param)
    msg = e.get("msg", "invalid value").removeprefix("Value error, ")
    if kind == "missing":
        return APIError(400, f"{param}: this field is required", param)
    got = e.get("input")
    shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
    return APIError(400, f"{param}: {msg} (got {shown})", param)
