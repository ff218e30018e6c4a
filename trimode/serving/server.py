"""What the endpoints share (:class:`Server`): model, tokenizer, limits, scheduler and metrics,
and the checks that turn a request body into the scheduler's jobs.

Request handlers only validate, tokenize, queue jobs and turn committed tokens into text
(:mod:`.call`); the model runs on the scheduler's one worker thread. Worker events reach the
handler through an ``asyncio.Queue`` fed with ``loop.call_soon_threadsafe``. ``temperature``
defaults to 0 (greedy): the lossless modes then reproduce AR exactly and every response is
reproducible. Seeded sampling (T > 0 with ``seed``) runs unbatched and is reproducible too;
unseeded sampling rows share the server's generator.

Images (a vision-language model, chat requests only): see :mod:`.images`. A prompt's images
travel with its job; the scheduler batches image and text rows alike.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..loading import Loaded
from .call import Call
from .config import ServerConfig
from .images import ImagePrompts, split_images
from .metrics import Metrics
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, unsupported
from .scheduler import GenerationParams, Job, JobEvent, Overloaded, Scheduler
from .text import TextAssembler

MIN_TEMPERATURE = 1e-5  # below: greedy
MIN_TOP_P = 1e-6  # below: float32 rounds top_p to 0 and the engine would drop every token


class Server:
    """Everything the endpoints share: model, tokenizer, limits, scheduler, metrics."""

    def __init__(self, config: ServerConfig, loaded: Loaded):
        if loaded.tokenizer is None:
            raise ValueError(f"{loaded.path} has no tokenizer; the server needs one to encode prompts")
        self.config = config
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.has_drafter = loaded.has_drafter
        self.name = config.served_model_name or loaded.name
        mc = loaded.model.config
        self.context = mc.max_position_embeddings
        self.vocab_size = mc.vocab_size
        self.block_length = config.block_length or mc.block_size
        self.threshold = mc.threshold if config.threshold == "model" else config.threshold
        self.created = int(time.time())
        self.images = ImagePrompts(loaded, self.tokenizer, self.name, config.max_images, config.max_image_bytes,
                                   config.max_image_pixels)
        self.metrics = Metrics()
        if config.auto.acceptance_floor is None and self.block_length > 1:
            # auto's floor: where speculation breaks even with AR on this machine, from what a forward
            # of B tokens costs here against one of 1 token
            from ..generation.autotune import measured_break_even

            floor = measured_break_even(self.model, config.auto.spec_mode, self.block_length)
            config = self.config = config.model_copy(deep=True)  # the caller's config stays as it was
            config.auto.acceptance_floor = round(floor, 2)
        self.scheduler = Scheduler(self.model, config, self.metrics)

    # ------------------------------------------------------------ prompts
    def completion_prompts(self, body: CompletionRequest) -> list[list[int]]:
        prompt = body.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        rows = []
        for i, p in enumerate(prompt):
            param = "prompt" if len(prompt) == 1 else f"prompt.{i}"
            ids = self.tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise APIError(400, f"{param}: token id {bad[0]} is outside [0, {self.vocab_size})", param)
            if not ids:
                raise APIError(400, f"{param}: the prompt is empty; give at least one token", param)
            self.images.check_placeholders(ids, param)  # images come through chat image parts only
            rows.append(ids)
        if len(rows) > self.config.max_batch_size:
            raise APIError(400, f"prompt: {len(rows)} prompts in one request; at most "
                                f"{self.config.max_batch_size} (max_batch_size)", "prompt")
        return rows

    async def chat_prompt(self, body: ChatCompletionRequest) -> tuple[list[list[int]], list[dict | None]]:
        """The chat's prompt ids (one prompt) and its image inputs (None without images)."""
        messages, sources = split_images(body.messages)
        if sources:
            self.images.check(sources)
            ids, images = await self.images.build(messages, sources)
            return [ids], [images]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # a template that refuses the conversation: the client's input, not a crash
            raise APIError(400, f"messages: the chat template rejected the conversation: {e}", "messages")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        self.images.check_placeholders(ids, "messages")
        return [ids], [None]

    # ------------------------------------------------------------ params
    def params(self, body, prompts: list[list[int]], prompt_param: str) -> GenerationParams:
        unsupported(body)
        if body.model is not None and body.model != self.name:
            raise APIError(404, f"model={body.model!r} does not exist; this server serves {self.name!r}",
                           "model", code="model_not_found")
        block_length = body.block_length if body.block_length is not None else self.block_length
        if block_length > self.config.max_block_length:
            raise APIError(400, f"block_length={block_length} is too large; allowed: 1 to "
                                f"{self.config.max_block_length}", "block_length")
        threshold = body.threshold if "threshold" in body.model_fields_set else self.threshold
        max_tokens, param = body.max_tokens, "max_tokens"
        if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
            max_tokens, param = body.max_completion_tokens, "max_completion_tokens"
        if max_tokens is not None and max_tokens > self.config.max_tokens_limit:
            raise APIError(400, f"{param}={max_tokens} is too large; allowed: 1 to {self.config.max_tokens_limit}",
                           param)
        longest = max(len(p) for p in prompts)
        room = self.context - longest
        if room < 1:
            raise APIError(400, f"{prompt_param}: the prompt is {longest} tokens; the model's context holds "
                                f"{self.context} tokens including at least 1 generated", prompt_param)
        if max_tokens is None:
            max_tokens = min(self.config.default_max_tokens, room)
        elif max_tokens > room:
            raise APIError(400, f"{param}={max_tokens} is too large for this prompt: {longest} prompt tokens + "
                                f"{max_tokens} exceed the context of {self.context}; allowed: 1 to {room}", param)
        # Tiny positive temperature / top_p are their limits (greedy; keep the top token only): taken
        # literally they overflow the logits or round to 0 in float32 and leave nothing to sample from.
        temperature = float(body.temperature or 0.0)
        temperature = 0.0 if temperature < MIN_TEMPERATURE else temperature
        top_p = None if body.top_p is None else max(body.top_p, MIN_TOP_P)
        return GenerationParams(
            mode=body.mode or self.config.mode, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            top_k=body.top_k or None, block_length=block_length, threshold=threshold, seed=body.seed,
            trace=bool(body.trace))

    # ------------------------------------------------------------ generation
    async def generate(self, body, request: Request, prompts: list[list[int]], params: GenerationParams,
                       chat: bool, images: list[dict | None] | None = None):
        """Queue one job per prompt (``images``: each prompt's image inputs, or None) and answer the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JobEvent] = asyncio.Queue()

        def sink(event: JobEvent) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        images = images or [None] * len(prompts)
        jobs = [Job(ids, params, sink, self.config.request_timeout, index=i, images=im)
                for i, (ids, im) in enumerate(zip(prompts, images))]
        try:
            self.scheduler.submit(jobs)
        except Overloaded as e:
            raise APIError(429, str(e), None, type="rate_limit_error", code="overloaded",
                           headers={"Retry-After": str(e.retry_after)})
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        texts = [TextAssembler(self.tokenizer, stops) for _ in jobs]
        call = Call(self, jobs, events, texts, params, chat, prompts,
                    image_tokens=sum(self.images.image_tokens(im) for im in images))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(call.stream(include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await call.complete(request)
