"""Image loading, the Pixtral resize grid, image placeholder layouts and prompt building for the VLM
(``trimode.image_processing``), down to a tiny random VLM decoding a prompt built from a chat with images."""

import base64
import io
import struct
import zlib

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, PixtralImageProcessor

from trimode.configuration_vlm import NemotronLabsDiffusionVLMConfig
from trimode.image_processing import (
    IMAGE_MARKER,
    ImageInputError,
    ImageProcessor,
    build_inputs,
    build_prompt,
    image_token_ids,
    load_image,
)
from trimode.modeling_vlm import NemotronLabsDiffusionVLMModel

TINY = "models/trimode-tiny"
ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 16, "llama_4_scaling_beta": 0.1}
# The trimode-tiny tokenizer has 2048 ids; the four image ids come after them, as the published VLM's
# extra vocabulary entry does, so no text token can be mistaken for a placeholder.
TEXT = dict(vocab_size=2052, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5, mask_token_id=3)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=4,
              image_size=64, num_channels=3, hidden_act="gelu", rope_parameters={"rope_theta": 10000.0})
PAD, START, BREAK, END = 2048, 2049, 2050, 2051
CELL = 8  # tiny tower: patch 4 x merge 2 pixels per image token


def tiny_config(**overrides) -> NemotronLabsDiffusionVLMConfig:
    kw = dict(TEXT, rope_parameters=dict(ROPE), vision_config=dict(VISION), image_token_id=PAD,
              image_break_token_id=BREAK, image_end_token_id=END, max_image_size=32)
    kw.update(overrides)
    return NemotronLabsDiffusionVLMConfig(**kw)


def tiny_vlm(**overrides) -> NemotronLabsDiffusionVLMModel:
    torch.manual_seed(0)
    model = NemotronLabsDiffusionVLMModel(tiny_config(**overrides)).eval()
    with torch.no_grad():  # O(1) weights, so the images move the logits visibly
        for p in model.parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.15 * torch.randn_like(p))
    return model


def published_config(**overrides) -> NemotronLabsDiffusionVLMConfig:
    """The default (published) tower: patch 14, merge 2, longest edge 1400; small text part."""
    return NemotronLabsDiffusionVLMConfig(**dict(TEXT, image_token_id=PAD, **overrides))


def picture(width=30, height=20, mode="RGB") -> Image.Image:
    """A gradient, so a wrong resize, crop or channel order shows in the pixels."""
    image = Image.new("RGB", (width, height))
    image.putdata([(7 * x % 256, 11 * y % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    return image.convert(mode)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels and has no pixel data (decoding it would fail)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", b"")


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY)


# ------------------------------------------------------------------------------------------ loading
def test_data_url_round_trips_png_exactly_and_jpeg_closely():
    original = picture()
    png = load_image(data_url(encoded(original, "PNG"), "png"))
    assert png.mode == "RGB" and same_pixels(png, original)
    jpeg = load_image(data_url(encoded(original, "JPEG"), "jpeg"))
    assert jpeg.mode == "RGB" and jpeg.size == original.size
    diff = torch.tensor(list(jpeg.tobytes()), dtype=torch.float) - torch.tensor(list(original.tobytes()))
    assert diff.abs().mean() < 12  # lossy, but the same picture
    wrapped = data_url(encoded(original, "PNG"), "PNG")
    wrapped = wrapped[:40] + "\n" + wrapped[40:]  # base64 wrapped over lines and an upper-case type still load
    assert same_pixels(load_image(wrapped), original)


def test_path_pil_and_bytes_inputs_give_the_same_rgb_pixels(tmp_path):
    original = picture()
    path = tmp_path / "picture.png"
    original.save(path)
    for source in (str(path), path, path.read_bytes(), bytearray(path.read_bytes()), original):
        assert same_pixels(load_image(source), original), type(source)
    grey = load_image(picture(mode="L"))
    assert grey.mode == "RGB" and grey.getpixel((3, 2))[0] == grey.getpixel((3, 2))[2]
    # Transparency is composited on white (transformers' convert_to_rgb), not left as black.
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(clear).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(encoded(clear, "PNG")).getpixel((1, 1)) == (255, 255, 255)
    assert clear.mode == "RGBA"  # the caller's image is not changed
    gif = load_image(data_url(encoded(picture(mode="P"), "GIF"), "gif"))
    assert gif.mode == "RGB" and gif.size == (30, 20)


@pytest.mark.parametrize("url", ["http://example.com/cat.png", "https://example.com/cat.png", "file:///etc/hosts",
                                 "ftp://example.com/cat.png", "s3://bucket/cat.png"])
def test_urls_are_refused_without_a_fetch(url):
    scheme = url.split(":")[0]
    with pytest.raises(ImageInputError, match=rf"scheme '{scheme}' is not supported.*no network") as info:
        load_image(url)
    assert "data:image/" in str(info.value) and "file path" in str(info.value)  # says what is allowed


def test_missing_corrupt_and_malformed_inputs_are_one_clear_error(tmp_path):
    cases = [
        (str(tmp_path / "missing.png"), r"missing\.png' cannot be read \(No such file"),
        (tmp_path, "is not a regular file"),
        (b"this is not an image", "raw image bytes is not a decodable image"),
        (encoded(picture(), "PNG")[:60], "corrupt or truncated"),
        ("data:image/png;base64,iVBORw0K$$$", "not valid base64"),
        ("data:image/png;base64,aGVsbG8=", "data: URL is not a decodable image"),
        ("data:image/svg+xml;base64,PHN2Zz4=", "image type 'svg\\+xml' is not supported"),
        ("data:text/plain,hello", "not of the form data:image/<type>;base64"),
        (12345, "an image of type int is not supported"),
        (encoded(picture(), "TIFF"), "not a decodable image.*allowed formats: PNG, JPEG"),
    ]
    for source, message in cases:
        with pytest.raises(ImageInputError, match=message):
            load_image(source)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # 9000 x 9000 claimed, no pixel data: decoding would fail as "truncated", so this message proves the
    # pixel count was refused from the header alone.
    with pytest.raises(ImageInputError, match=r"9000x9000 = 81000000 pixels is over the limit of 50000000"):
        load_image(png_header(9000, 9000))
    with pytest.raises(ImageInputError, match="corrupt or truncated"):  # under the limit: it is decoded
        load_image(png_header(90, 90))
    # Beyond PIL's own decompression-bomb limit the header read itself refuses.
    with pytest.raises(ImageInputError, match=r"too many pixels to decode safely.*limit is 50000000"):
        load_image(data_url(png_header(50_000, 50_000), "png"))
    real = encoded(picture(400, 300), "PNG")
    with pytest.raises(ImageInputError, match=r"400x300 = 120000 pixels is over the limit of 1000 pixels"):
        load_image(real, max_pixels=1000)
    with pytest.raises(ImageInputError, match=r"PIL image: 400x300 = 120000 pixels"):
        load_image(picture(400, 300), max_pixels=1000)
    assert load_image(real, max_pixels=120_000).size == (400, 300)


def test_byte_limit_applies_to_files_bytes_and_data_urls(tmp_path):
    data = encoded(picture(), "PNG")
    path = tmp_path / "p.png"
    path.write_bytes(data)
    for source in (path, data, data_url(data, "png")):
        with pytest.raises(ImageInputError, match=r"bytes is over the limit of 100 bytes \(max_bytes\)"):
            load_image(source, max_bytes=100)
        assert load_image(source, max_bytes=len(data) + 3).size == (30, 20)


# ------------------------------------------------------------------------------------------ resize grid
def test_resize_grid_is_transformers_pixtral_with_the_merged_patch():
    processor = ImageProcessor(published_config())
    assert (processor.patch_size, processor.spatial_merge_size, processor.cell, processor.max_image_size) == \
        (14, 2, 28, 1400)
    reference = PixtralImageProcessor(patch_size={"height": 28, "width": 28}, size={"longest_edge": 1400})
    images = [picture(300, 200), picture(45, 200), picture(3000, 1000)]
    ours = processor(images)
    want = reference(images, return_tensors="pt")
    assert ours["image_sizes"].tolist() == want["image_sizes"].tolist() == [[224, 308], [224, 56], [476, 1400]]
    assert ours["image_sizes"].dtype == torch.long and ours["pixel_values"].dtype == torch.float32
    assert torch.equal(ours["pixel_values"], want["pixel_values"])
    assert ours["pixel_values"].shape == (3, 3, 476, 1400)  # padded to the batch's largest height and width
    assert ours["pixel_values"][0, :, 224:].abs().max() == 0 and ours["pixel_values"][0, :, :224, :308].std() > 0.1
    # Small images are not enlarged towards the longest edge, only rounded up to whole merged patches.
    assert processor.token_grid((200, 300)) == (8, 11)


@pytest.mark.parametrize("max_image_size", [1400, 1000, 32])
def test_token_grid_is_the_processed_size_and_is_stable_on_it(max_image_size):
    processor = ImageProcessor(published_config(max_image_size=max_image_size))
    for height, width in [(1, 1), (27, 29), (200, 300), (1401, 50), (999, 4000), (2800, 2800)]:
        (h, w), = processor(Image.new("RGB", (width, height)))["image_sizes"].tolist()  # the size is what counts
        rows, cols = processor.token_grid((height, width))
        assert (h, w) == (rows * 28, cols * 28), (height, width)
        assert processor.token_grid((h, w)) == (rows, cols)  # a processed size gives its own grid
        assert max(h, w) <= -(-max_image_size // 28) * 28  # never past the limit rounded to a patch


def test_extreme_aspect_ratio_and_empty_batch_are_refused():
    processor = ImageProcessor(published_config())
    with pytest.raises(ImageInputError, match=r"aspect ratio of 1x3000 .* too extreme.*1400 px"):
        processor(picture(3000, 1))
    with pytest.raises(ImageInputError, match="no images given"):
        processor([])


# ------------------------------------------------------------------------------------------ token layouts
def test_image_token_layouts():
    def ids(**frame):
        return image_token_ids(2, 3, published_config(**frame))

    p, s, b, e = PAD, START, BREAK, END
    assert ids(image_break_token_id=b, image_end_token_id=e) == [p, p, p, b, p, p, p, e]  # Pixtral
    assert ids(image_start_token_id=s, image_break_token_id=b, image_end_token_id=e) == \
        [s, p, p, p, b, p, p, p, e]  # NLD: wrapped in start ... end
    assert ids() == [p] * 6  # placeholders only
    assert ids(image_start_token_id=s, image_end_token_id=e) == [s] + [p] * 6 + [e]  # no row breaks
    assert ids(image_break_token_id=b) == [p, p, p, b, p, p, p, b]  # Pixtral without an end token
    one = image_token_ids(1, 1, published_config(image_start_token_id=s, image_break_token_id=b,
                                                 image_end_token_id=e))
    assert one == [s, p, e]  # AX-TESTS' one-token image: [start, pad, end]
    assert image_token_ids(5, 7, tiny_config()).count(PAD) == 35
    with pytest.raises(ValueError, match="rows=0 must be a positive integer"):
        image_token_ids(0, 3, tiny_config())
    with pytest.raises(ValueError, match="config.image_token_id is None"):
        image_token_ids(1, 1, tiny_config(image_token_id=None, image_break_token_id=None, image_end_token_id=None))


def test_config_image_fields_validate_and_round_trip(tmp_path):
    cfg = published_config()
    assert (cfg.image_start_token_id, cfg.image_break_token_id, cfg.image_end_token_id, cfg.max_image_size) == \
        (None, None, None, 1400)
    bad = [(dict(max_image_size=0), "max_image_size=0 must be a positive integer"),
           (dict(max_image_size=1.5), "max_image_size=1.5"),
           (dict(image_end_token_id=True), "image_end_token_id=True must be null or an integer"),
           (dict(image_break_token_id=2052), r"image_break_token_id=2052 must be null or an integer in \[0, "
                                             r"vocab_size=2052\)"),
           (dict(image_start_token_id=PAD), f"image_start_token_id={PAD} must differ from image_token_id")]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            published_config(**overrides)
    cfg = tiny_config(image_start_token_id=START)
    cfg.save_pretrained(tmp_path)
    loaded = NemotronLabsDiffusionVLMConfig.from_pretrained(tmp_path)
    assert (loaded.image_token_id, loaded.image_start_token_id, loaded.image_break_token_id,
            loaded.image_end_token_id, loaded.max_image_size) == (PAD, START, BREAK, END, 32)


def test_placeholders_equal_the_features_the_vlm_makes():
    model = tiny_vlm(image_start_token_id=START)
    processor = ImageProcessor(model.config)
    images = [picture(30, 20), picture(50, 13), picture(8, 8), picture(33, 31)]
    inputs = processor(images)
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    for image, size, feature in zip(images, inputs["image_sizes"].tolist(), features):
        rows, cols = processor.token_grid((image.height, image.width))
        assert (rows * CELL, cols * CELL) == tuple(size)
        assert image_token_ids(rows, cols, model.config).count(PAD) == rows * cols == feature.shape[0]
    assert [f.shape[0] for f in features] == [3 * 4, 1 * 4, 1, 4 * 4]


# ------------------------------------------------------------------------------------------ prompts
def test_chat_without_images_is_the_chat_template_tokenization(tokenizer):
    config = tiny_config()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b):"}]
    out = build_inputs(tokenizer, messages, config, ImageProcessor(config))
    assert out["input_ids"] == tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert out["pixel_values"] is None and out["image_sizes"] is None
    parts = [{"role": "user", "content": [{"type": "text", "text": "def add"}, {"type": "text", "text": "(a, b):"}]}]
    no_prompt = build_inputs(tokenizer, parts, config, add_generation_prompt=False)
    assert no_prompt["input_ids"] == tokenizer.apply_chat_template(
        [{"role": "user", "content": "def add(a, b):"}], add_generation_prompt=False)["input_ids"]


def test_chat_images_are_spliced_in_message_order(tokenizer, tmp_path):
    config = tiny_config(image_start_token_id=START)
    processor = ImageProcessor(config)
    first, second, third = picture(30, 20), picture(16, 16), picture(8, 24)
    path = tmp_path / "third.png"
    third.save(path)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Compare "},
                                     {"type": "image_url", "image_url": {"url": data_url(encoded(first, "PNG"),
                                                                                           "png")}},
                                     {"type": "text", "text": " and "},
                                     {"type": "image", "image": second}]},
        {"role": "assistant", "content": "Two pictures."},
        {"role": "user", "content": [{"type": "image_url", "image_url": str(path)}, {"type": "text", "text": "And?"}]},
    ]
    out = build_inputs(tokenizer, messages, config, processor)

    def text(s):
        return tokenizer.encode(s, add_special_tokens=False)

    grids = [processor.token_grid((im.height, im.width)) for im in (first, second, third)]
    want = (text("<|user|>Compare ") + image_token_ids(*grids[0], config) + text(" and ")
            + image_token_ids(*grids[1], config) + text("<|assistant|>Two pictures.<|eos|><|user|>")
            + image_token_ids(*grids[2], config) + text("And?<|assistant|>"))
    assert out["input_ids"] == want
    assert grids == [(3, 4), (2, 2), (3, 1)] and text("<|user|>")[0] == tokenizer.convert_tokens_to_ids("<|user|>")
    assert out["image_sizes"].tolist() == [[24, 32], [16, 16], [24, 8]]
    assert torch.equal(out["pixel_values"], processor([first, second, third])["pixel_values"])


def test_chat_part_errors(tokenizer):
    config = tiny_config()
    for part, message in [({"type": "video", "video": "x.mp4"}, r"content\[0\]: part type 'video' is not supported"),
                          ({"type": "image_url", "image_url": {}}, "an image_url part needs"),
                          ({"type": "image"}, "an image part needs 'image'"),
                          ({"type": "image_url", "image_url": "https://x/y.png"}, "scheme 'https' is not supported")]:
        with pytest.raises(ImageInputError, match=message):
            build_inputs(tokenizer, [{"role": "user", "content": [part]}], config)
    with pytest.raises(ImageInputError, match="messages must be a non-empty list"):
        build_inputs(tokenizer, [], config)
    with pytest.raises(ImageInputError, match=r"messages\[0\].content must be a string or a list"):
        build_inputs(tokenizer, [{"role": "user", "content": 5}], config)


def test_chat_template_that_drops_an_image_is_refused(tokenizer):
    class FirstMessageOnly:  # a tokenizer whose template renders the first message only
        chat_template = "yes"

        def apply_chat_template(self, messages, **kwargs):
            return tokenizer.apply_chat_template(messages[:1], **kwargs)

        def encode(self, text, add_special_tokens=True):
            return tokenizer.encode(text, add_special_tokens=add_special_tokens)

    messages = [{"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "image", "image": picture()}]}]
    with pytest.raises(ImageInputError, match="kept 0 of the 1 images"):
        build_inputs(FirstMessageOnly(), messages, tiny_config())


class WithBOS:
    """trimode-tiny's tokenizer, as one that adds BOS before what it encodes (as Llama's) and has no chat template."""

    chat_template = None

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.bos = tokenizer.convert_tokens_to_ids("<|bos|>")

    def encode(self, text, add_special_tokens=True):
        return ([self.bos] if add_special_tokens else []) + self.tok.encode(text, add_special_tokens=False)


def test_plain_prompt_markers_and_counts(tokenizer):
    config = tiny_config()
    processor = ImageProcessor(config)
    a, b = picture(16, 8), picture(8, 8)
    out = build_prompt(tokenizer, f"Left {IMAGE_MARKER} right {IMAGE_MARKER}.", [a, b], config, processor)
    enc = tokenizer.encode
    assert out["input_ids"] == (enc("Left ") + image_token_ids(1, 2, config) + enc(" right ")
                                + image_token_ids(1, 1, config) + enc("."))
    first = build_prompt(tokenizer, "Describe.", [a, b], config, processor)  # no marker: images first
    assert first["input_ids"] == image_token_ids(1, 2, config) + image_token_ids(1, 1, config) + enc("Describe.")
    assert build_prompt(tokenizer, "hello", None, config)["input_ids"] == enc("hello")
    with pytest.raises(ImageInputError, match=r"more images than <image> markers: 2 images, 1 markers"):
        build_prompt(tokenizer, f"one {IMAGE_MARKER}", [a, b], config, processor)
    with pytest.raises(ImageInputError, match=r"more <image> markers than images: 2 markers in the prompt, 1 images"):
        build_prompt(tokenizer, IMAGE_MARKER * 2, a, config, processor)


def test_bos_is_added_once_and_a_chat_without_template_uses_the_plain_rules(tokenizer):
    config = tiny_config()
    tok = WithBOS(tokenizer)
    enc = tokenizer.encode
    out = build_prompt(tok, f"see {IMAGE_MARKER}", picture(8, 8), config)
    assert out["input_ids"] == [tok.bos] + enc("see ") + image_token_ids(1, 1, config)
    own = build_prompt(tok, f"<|bos|>see {IMAGE_MARKER}", picture(8, 8), config)
    assert own["input_ids"] == out["input_ids"]  # the text's own BOS, not a second one
    chat = build_inputs(tok, [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": [{"type": "image", "image": picture(8, 8)},
                                                           {"type": "text", "text": "What is it? <image>"}]}], config)
    # Contents joined by newlines; "<image>" typed by the user is text here, not a second image.
    assert chat["input_ids"] == [tok.bos] + enc("Be brief.\n") + image_token_ids(1, 1, config) + \
        enc("What is it? <image>")
    assert chat["image_sizes"].tolist() == [[8, 8]]


# ------------------------------------------------------------------------------------------ end to end
def test_a_chat_with_images_decodes_and_speculation_equals_ar(tokenizer):
    model = tiny_vlm(image_start_token_id=START)
    messages = [{"role": "user", "content": [{"type": "image", "image": encoded(picture(30, 20), "PNG")},
                                             {"type": "text", "text": "and"},
                                             {"type": "image_url", "image_url": {"url": data_url(
                                                 encoded(picture(13, 40), "JPEG"), "jpeg")}},
                                             {"type": "text", "text": "def f(x):"}]}]
    inputs = build_inputs(tokenizer, messages, model.config, ImageProcessor(model.config))
    ids = torch.tensor([inputs["input_ids"]])
    images = dict(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    assert int((ids == PAD).sum()) == 3 * 4 + 4 * 2  # 30x20 -> 3x4 tokens; 13x40 -> 10x32 px -> 4x2
    kw = dict(max_new_tokens=10, eos_token_id=[])
    ar, _ = model.ar_generate(ids, **images, **kw)
    spec, _ = model.linear_spec_generate(ids, block_length=4, **images, **kw)
    assert ar.shape == (1, ids.shape[1] + 10) and torch.equal(ar[:, :ids.shape[1]], ids)
    assert torch.equal(spec, ar)
    with torch.no_grad():  # the pixels reach the model: other pixels, other logits
        logits = model(ids, **images).logits[0, -1]
        other = model(ids, pixel_values=-images["pixel_values"], image_sizes=images["image_sizes"]).logits[0, -1]
    assert (logits - other).abs().max() > 1e-2
