"""Images over HTTP: OpenAI ``image_url`` content parts (``data:`` URLs) on a live server of the tiny VLM.

Every mode answers an image chat with the in-process API's greedy tokens, streaming or not, alone or
batched with other requests (image and text rows in one batch); usage counts the image tokens and
reports the prefill (image encoding) and decode times apart. Every bad image is a 400 naming the part
and what is allowed, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
import torch
from PIL import Image
from vlm_model_dir import PAD, VLM_LIMITS, data_url, picture, png_bytes

from trimode.image_processing import build_inputs
from trimode.loading import load

CHAT = "/v1/chat/completions"
MODES = ["ar", "diffusion", "linear-spec", "quadratic-spec", "auto"]
N = 10


def image_part(image: Image.Image | str) -> dict:
    url = image if isinstance(image, str) else data_url(image)
    return {"type": "image_url", "image_url": {"url": url}}


def messages(*images, text: str = "What is in the picture?") -> list[dict]:
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [*(image_part(im) for im in images), {"type": "text", "text": text}]}]


def chat(live, msgs, **extra) -> httpx.Response:
    return httpx.post(live.url + CHAT, json={"model": "tiny-vlm", "messages": msgs, "max_tokens": N, **extra},
                      timeout=60)


@pytest.fixture(scope="module")
def api(vlm_model_dir):
    """The same directory loaded in-process: what the server must reproduce."""
    return load(vlm_model_dir)


def api_tokens(api, msgs, mode: str) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy tokens) of the Python API for the same chat; auto runs a lossless mode: AR's tokens."""
    built = build_inputs(api.tokenizer, msgs, api.model.config, api.image_processor)
    ids = built["input_ids"]
    out, _ = api.model.decode_mode("ar" if mode == "auto" else mode, [ids], max_new_tokens=N,
                                   pixel_values=built["pixel_values"], image_sizes=built["image_sizes"])
    return ids, out[0, len(ids):].tolist()


def streamed(live, msgs, **extra) -> tuple[list[int], str, dict]:
    """(token ids, text, usage) of a streamed chat."""
    body = {"model": "tiny-vlm", "messages": msgs, "max_tokens": N, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    tokens, text, usage = [], "", None
    with httpx.stream("POST", live.url + CHAT, json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line[6:])
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            tokens += choice.get("token_ids", [])
            text += choice.get("delta", {}).get("content", "") or ""
    return tokens, text, usage


# ------------------------------------------------------------------------------------------ answers
@pytest.mark.parametrize("mode", MODES)
def test_image_chat_in_every_mode_equals_the_api(vlm_server, api, mode):
    msgs = messages(picture(30, 20), picture(16, 24, seed=5))
    ids, want = api_tokens(api, msgs, mode)
    r = chat(vlm_server, msgs, mode=mode)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == api.tokenizer.decode(want, skip_special_tokens=True)
    usage = body["usage"]
    assert usage["requested_mode"] == mode and (mode == "auto" or usage["mode"] == mode)
    assert usage["prompt_tokens"] == len(ids) and usage["completion_tokens"] == len(want)
    assert usage["image_tokens"] == ids.count(PAD) == 3 * 4 + 3 * 2
    assert usage["total_tokens"] == len(ids) + len(want)
    assert usage["prefill_s"] > 0 and usage["decode_s"] > 0  # timed apart: the images are in the prefill


@pytest.mark.parametrize("mode", MODES)
def test_streaming_an_image_chat_sends_the_api_tokens(vlm_server, api, mode):
    msgs = messages(picture(24, 24, seed=2), text="Describe it.")
    ids, want = api_tokens(api, msgs, mode)
    tokens, text, usage = streamed(vlm_server, msgs, mode=mode)
    assert tokens == want and text == api.tokenizer.decode(want, skip_special_tokens=True)
    assert usage["completion_tokens"] == len(want) and usage["image_tokens"] == 9 and usage["prompt_tokens"] == len(ids)


def test_the_openai_client_sends_image_parts(vlm_server, api):
    client = openai.OpenAI(base_url=vlm_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    msgs = messages(picture(30, 20))
    msgs[1]["content"][0]["image_url"]["detail"] = "low"  # accepted, ignored
    r = client.chat.completions.create(model="tiny-vlm", messages=msgs, max_tokens=N,
                                       extra_body={"mode": "linear-spec"})
    _, want = api_tokens(api, messages(picture(30, 20)), "linear-spec")
    assert r.choices[0].message.content == api.tokenizer.decode(want, skip_special_tokens=True)
    assert client.models.retrieve("tiny-vlm").model_extra["vision"] is True


async def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.post(url + CHAT, json=b) for b in bodies))


@pytest.mark.parametrize("mode", ["linear-spec", "diffusion"])
def test_image_and_text_requests_share_a_batch_and_keep_their_answers(vlm_server, api, mode):
    """Held until all three queue, two image chats and a text chat run as one batch: each row gets its
    own images (row order) and the answer it gets alone."""
    chats = [messages(picture(30, 20), text="first"), [{"role": "user", "content": "just text"}],
             messages(picture(8, 32, seed=7), picture(20, 20, seed=1), text="second")]
    bodies = [{"model": "tiny-vlm", "messages": m, "max_tokens": N, "mode": mode} for m in chats]
    alone = [chat(vlm_server, m, mode=mode).json() for m in chats]
    scheduler = vlm_server.server.scheduler
    with scheduler.paused():
        result: list = []
        thread = threading.Thread(target=lambda: result.append(asyncio.run(_post_all(vlm_server.url, bodies))))
        thread.start()
        deadline = time.monotonic() + 30
        while scheduler.queue_depth < 3:
            assert time.monotonic() < deadline, "requests did not reach the queue"
            time.sleep(0.01)
    thread.join(60)
    together = [r.json() for r in result[0]]
    assert [r["usage"]["batch_size"] for r in together] == [3, 3, 3]
    for a, t, m in zip(alone, together, chats):
        assert t["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]
        assert t["usage"]["completion_tokens"] == a["usage"]["completion_tokens"]
        if m[0]["role"] == "system":  # the image chats: the API's tokens too
            assert t["usage"]["completion_tokens"] == len(api_tokens(api, m, mode)[1])
    assert [t["usage"]["image_tokens"] for t in together] == [12, 0, 4 + 9]


# ------------------------------------------------------------------------------------------ bad images
def noise(width: int, height: int) -> Image.Image:
    """Random pixels: a PNG that does not compress (large in bytes, small in pixels)."""
    gen = torch.Generator().manual_seed(0)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8).numpy())


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


URL = "messages.1.content.0.image_url.url"
BAD = [  # (name, user content parts, error param, message fragment)
    ("http url", [image_part("http://127.0.0.1:9/cat.png")], URL,
     "URL scheme 'http' is not supported; send each image inline as a data:image/"),
    ("https url", [image_part("https://example.com/cat.png")], URL, "URL scheme 'https' is not supported"),
    ("file url", [image_part("file:///etc/hosts")], URL, "URL scheme 'file' is not supported"),
    ("ftp url", [image_part("ftp://example.com/cat.png")], URL, "URL scheme 'ftp' is not supported"),
    ("local path", [image_part("/etc/hosts")], URL, "an image URL without a scheme (a file path?) is not supported"),
    ("not an image", [image_part("data:image/png;base64," + _b64(b"hello, not a png"))], URL,
     "data: URL is not a decodable image"),
    ("truncated png", [image_part("data:image/png;base64," + _b64(png_bytes(picture())[:80]))], URL,
     "corrupt or truncated"),
    ("bad base64", [image_part("data:image/png;base64,iVBORw0K$$$")], URL, "not valid base64"),
    ("not an image type", [image_part("data:text/plain;base64,aGk=")], URL, "is not of the form data:image/"),
    ("svg", [image_part("data:image/svg+xml;base64,PHN2Zz4=")], URL, "image type 'svg+xml' is not supported"),
    ("too many bytes", [image_part(noise(100, 90))], URL,
     f"bytes is over the limit of {VLM_LIMITS['max_image_bytes']} bytes"),
    ("too many pixels", [image_part(Image.new("RGB", (120, 100), (9, 9, 9)))], URL,
     f"120x100 = 12000 pixels is over the limit of {VLM_LIMITS['max_image_pixels']} pixels"),
    ("too many images", [image_part(picture(8, 8))] * 4, "messages",
     "4 images in one request; at most 3 (max_images)"),
    ("extreme aspect ratio", [image_part(Image.new("RGB", (1, 99), (1, 2, 3)))], "messages",
     "too extreme"),
    ("placeholder typed in the text", [image_part(picture()), {"type": "text", "text": "see [IMG] here"}], "messages",
     "the image placeholder token '[IMG]' (id 2048), 1 time(s)"),
    ("image_url not an object", [{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}],
     "messages.1.content.0.image_url", "Input should be a valid dictionary"),
    ("missing url", [{"type": "image_url", "image_url": {}}], URL, "this field is required"),
    ("unknown part type", [{"type": "input_audio", "input_audio": {}}], "messages.1.content.0.type",
     "Input should be 'text' or 'image_url'"),
    ("bad detail", [{"type": "image_url", "image_url": {"url": data_url(picture()), "detail": "max"}}],
     "messages.1.content.0.image_url.detail", "Input should be 'auto', 'low' or 'high'"),
]


@pytest.mark.parametrize("name,parts,param,message", BAD, ids=[b[0] for b in BAD])
def test_bad_image_is_a_400_naming_the_part(vlm_server, name, parts, param, message):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]
    r = chat(vlm_server, msgs)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"].startswith(param), error
    assert message in error["message"], error
    assert "data:image/png;base64,iVBOR" not in error["message"]  # never the image data echoed back


def test_the_server_keeps_serving_after_bad_images(vlm_server):
    for _, parts, _, _ in BAD:
        chat(vlm_server, [{"role": "user", "content": parts}])
    assert chat(vlm_server, messages(picture())).status_code == 200
    assert chat(vlm_server, [{"role": "user", "content": "text still works"}]).status_code == 200
    assert httpx.get(vlm_server.url + "/health").json()["status"] == "ok"


def test_placeholder_ids_in_a_completion_prompt_are_refused(vlm_server):
    """/v1/completions takes no images; its text or token ids may not smuggle placeholders in."""
    for prompt in ([5, PAD, 6], "a [IMG] b"):
        r = httpx.post(vlm_server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert "image placeholder token '[IMG]'" in r.json()["error"]["message"]
    ok = httpx.post(vlm_server.url + "/v1/completions", json={"prompt": "def f(x):", "max_tokens": 4}, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["image_tokens"] == 0


def test_images_to_a_text_model_name_the_model(server):
    r = httpx.post(server.url + CHAT, json={"model": "tiny", "messages": messages(picture()), "max_tokens": 4},
                   timeout=60)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == URL and error["code"] == "images_not_supported"
    assert "model 'tiny' (TrimodeModel, model_type 'trimode') has no vision tower: it takes no images" in error["message"]
    assert httpx.get(server.url + "/v1/models/tiny").json()["vision"] is False
    ok = httpx.post(server.url + CHAT, json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 4}, timeout=60)
    assert ok.status_code == 200
