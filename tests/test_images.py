"""Images in messages, through the real openai and anthropic SDKs: each provider is sent them in its own form,
they are counted by their size, and a persona whose model takes no images refuses them."""

from __future__ import annotations

import base64
import struct

import anthropic
import openai
import pytest

from personas.png import plain_png
from tests.conftest import persona_body

PHOTO_URL = "https://images.example.com/cat.jpg"


def png(width: int, height: int) -> bytes:
    return plain_png(width, height, (200, 30, 30))


def jpeg(width: int, height: int) -> bytes:
    """The header of a JPEG: SOI, an APP0 segment, then a start-of-frame that says its size."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def webp(width: int, height: int) -> bytes:
    """A lossless WebP's header: the VP8L signature byte, then 14 bits each of width and height, less one."""
    bits = (width - 1) | ((height - 1) << 14)
    chunk = b"VP8L" + struct.pack("<I", 5) + b"\x2f" + struct.pack("<I", bits)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{b64(data)}"


@pytest.fixture
def openai_sdk(llm_app, alice):
    return openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=alice.key, max_retries=0)


@pytest.fixture
def anthropic_sdk(llm_app, alice):
    return anthropic.AsyncAnthropic(base_url=llm_app.state.base_url, api_key=alice.key, max_retries=0)


@pytest.fixture
def make_persona(llm_client, alice):
    async def make(provider: str, **settings):
        body = persona_body(model_settings={"provider": provider, **settings})
        answer = await llm_client.post("/api/v1/chat/personas", json=body, headers=alice.headers)
        assert answer.status_code == 201, answer.text
        return f"persona/{answer.json()['persona']['name']}"

    return make


def last_user_content(fake_llm):
    sent = fake_llm.last_request
    return sent.path, [m for m in sent.body["messages"] if m["role"] == "user"][-1]["content"]


# OpenAI's parts in -----------------------------------------------------------------------------------------


async def test_image_url_parts_reach_an_openai_compatible_provider_as_sent(openai_sdk, fake_llm, make_persona):
    model = await make_persona("openai")
    picture = data_url(png(40, 30))
    completion = await openai_sdk.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Which of these is a cat?"},
                    {"type": "image_url", "image_url": {"url": PHOTO_URL, "detail": "low"}},
                    {"type": "text", "text": " Or this one?"},
                    {"type": "image_url", "image_url": {"url": picture}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "Hello from the fake model."
    path, content = last_user_content(fake_llm)
    assert path == "/v1/chat/completions"
    assert content == [
        {"type": "text", "text": "Which of these is a cat?"},
        {"type": "image_url", "image_url": {"url": PHOTO_URL, "detail": "low"}},
        {"type": "text", "text": " Or this one?"},
        {"type": "image_url", "image_url": {"url": picture}},
    ]


async def test_image_url_parts_reach_anthropic_as_image_blocks(openai_sdk, fake_llm, make_persona):
    model = await make_persona("anthropic")
    data = png(64, 64)
    stream = await openai_sdk.chat.completions.create(
        model=model,
        stream=True,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(data), "detail": "high"}},
                    {"type": "text", "text": "What colour is it?"},
                    {"type": "image_url", "image_url": {"url": PHOTO_URL}},
                ],
            }
        ],
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "Hello from the fake model."
    path, content = last_user_content(fake_llm)
    assert path == "/v1/messages"
    # OpenAI's `detail` has no equivalent in Anthropic's API, and is not sent.
    assert content == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(data)}},
        {"type": "text", "text": "What colour is it?"},
        {"type": "image", "source": {"type": "url", "url": PHOTO_URL}},
    ]


# Anthropic's blocks in -------------------------------------------------------------------------------------


async def test_image_blocks_reach_an_openai_compatible_provider_as_image_url_parts(
    anthropic_sdk, fake_llm, make_persona
):
    model = await make_persona("openai")
    data = jpeg(800, 600)
    message = await anthropic_sdk.messages.create(
        model=model,
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64(data)}},
                    {"type": "text", "text": "with"},
                    {"type": "image", "source": {"type": "url", "url": PHOTO_URL}},
                ],
            }
        ],
    )
    assert message.content[0].text == "Hello from the fake model."
    path, content = last_user_content(fake_llm)
    assert path == "/v1/chat/completions"
    assert content == [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": data_url(data, "image/jpeg")}},
        {"type": "text", "text": "\n\nwith"},  # text blocks are passages, kept apart as on a text-only turn
        {"type": "image_url", "image_url": {"url": PHOTO_URL}},
    ]


async def test_image_blocks_reach_anthropic_in_its_own_form(anthropic_sdk, fake_llm, make_persona):
    model = await make_persona("anthropic")
    data = png(10, 10)
    async with anthropic_sdk.messages.stream(
        model=model,
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(data)}},
                    {"type": "image", "source": {"type": "url", "url": PHOTO_URL}},
                ],
            }
        ],
    ) as stream:
        text = await stream.get_final_text()
    assert text == "Hello from the fake model."
    path, content = last_user_content(fake_llm)
    assert path == "/v1/messages"
    # An image needs no words beside it.
    assert content == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(data)}},
        {"type": "image", "source": {"type": "url", "url": PHOTO_URL}},
    ]


async def test_the_echo_provider_says_how_many_images_it_was_given(openai_sdk, anthropic_sdk, fake_llm, make_persona):
    model = await make_persona("echo")
    completion = await openai_sdk.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PHOTO_URL}},
                    {"type": "image_url", "image_url": {"url": data_url(png(2, 2))}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "[echo] What is this? [2 images]"
    image = {"type": "image", "source": {"type": "url", "url": PHOTO_URL}}
    message = await anthropic_sdk.messages.create(
        model=model, max_tokens=50, messages=[{"role": "user", "content": [image]}]
    )
    assert message.content[0].text == "[echo] [1 image]"
    assert fake_llm.chat_requests() == []


# Counted by size ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "width", "height", "tokens"),
    [
        # OpenAI's tiles: scaled to 768 on the short side, four 512-pixel tiles, 85 + 4 x 170.
        ("openai", 1000, 1000, 765),
        # Fit into 2048 x 2048, then 768 x 1536: six tiles.
        ("openai", 2048, 4096, 1105),
        # Anthropic's width x height / 750, within 1.15 megapixels.
        ("anthropic", 1000, 1000, 1334),
        ("anthropic", 300, 200, 80),
    ],
)
async def test_count_tokens_counts_an_image_by_its_size(
    anthropic_sdk, fake_llm, make_persona, provider, width, height, tokens
):
    model = await make_persona(provider)
    text = {"type": "text", "text": "What is in this picture?"}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(png(width, height))}}
    plain = await anthropic_sdk.messages.count_tokens(model=model, messages=[{"role": "user", "content": [text]}])
    pictured = await anthropic_sdk.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": [text, image]}]
    )
    assert pictured.input_tokens - plain.input_tokens == tokens
    assert fake_llm.chat_requests() == []


async def test_an_image_of_unknown_size_and_a_low_detail_one_count_fixed_estimates(
    anthropic_sdk, openai_sdk, make_persona
):
    question = {"type": "text", "text": "Describe it."}
    for provider, expected in (("openai", 765), ("anthropic", 1600)):
        model = await make_persona(provider)
        plain = await anthropic_sdk.messages.count_tokens(
            model=model, messages=[{"role": "user", "content": [question]}]
        )
        linked = await anthropic_sdk.messages.count_tokens(
            model=model,
            messages=[
                {"role": "user", "content": [question, {"type": "image", "source": {"type": "url", "url": PHOTO_URL}}]}
            ],
        )
        assert linked.input_tokens - plain.input_tokens == expected
        jpg = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64(jpeg(1000, 1000))}}
        sized = await anthropic_sdk.messages.count_tokens(
            model=model, messages=[{"role": "user", "content": [question, jpg]}]
        )
        assert sized.input_tokens - plain.input_tokens == {"openai": 765, "anthropic": 1334}[provider]


@pytest.mark.parametrize(
    ("media_type", "make"), [("image/png", png), ("image/jpeg", jpeg), ("image/gif", gif), ("image/webp", webp)]
)
async def test_each_image_type_is_sized_from_its_own_header(anthropic_sdk, make_persona, media_type, make):
    model = await make_persona("anthropic")
    text = {"type": "text", "text": "Describe it."}
    image = {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": b64(make(300, 200))}}
    plain = await anthropic_sdk.messages.count_tokens(model=model, messages=[{"role": "user", "content": [text]}])
    sized = await anthropic_sdk.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": [text, image]}]
    )
    assert sized.input_tokens - plain.input_tokens == 80  # 300 x 200 / 750, not the 1600 of an unknown size


async def test_images_count_against_the_models_window(openai_sdk, fake_llm, make_persona):
    # 1200 tokens, less 200 for the answer: room for text, not for a 1600-token image on a Claude model.
    model = await make_persona("anthropic", context_window=1200)
    question = {"type": "text", "text": "Describe it."}
    await openai_sdk.chat.completions.create(
        model=model, max_tokens=200, messages=[{"role": "user", "content": [question]}]
    )
    image = {"type": "image_url", "image_url": {"url": PHOTO_URL}}
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_sdk.chat.completions.create(
            model=model, max_tokens=200, messages=[{"role": "user", "content": [question, image]}]
        )
    assert refused.value.body["code"] == "context_length_exceeded"
    assert len(fake_llm.chat_requests()) == 1


# Refused -----------------------------------------------------------------------------------------------------


async def test_a_persona_whose_model_takes_no_images_refuses_them(openai_sdk, anthropic_sdk, fake_llm, make_persona):
    model = await make_persona("openai", vision=False)
    image = {"type": "image_url", "image_url": {"url": PHOTO_URL}}
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_sdk.chat.completions.create(
            model=model,
            messages=[
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "Look"}, image]},
            ],
        )
    assert refused.value.body["param"] == "messages[2].content[1]"
    assert "takes no images" in refused.value.body["message"]
    assert "model_settings.vision" in refused.value.body["message"]

    block = {"type": "image", "source": {"type": "url", "url": PHOTO_URL}}
    with pytest.raises(anthropic.BadRequestError) as blocked:
        await anthropic_sdk.messages.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, block]}]
        )
    assert "`messages[0].content[1]`" in blocked.value.body["error"]["message"]
    assert "takes no images" in blocked.value.body["error"]["message"]

    # Text alone still goes through.
    completion = await openai_sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    assert completion.choices[0].message.content == "Hello from the fake model."
    assert len(fake_llm.chat_requests()) == 1


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("data:image/png;base64,@@@not-base64@@@", "not valid base64"),
        ("data:image/png," + "x" * 10, "not base64"),
        (data_url(b"GIF89a" + bytes(20), "image/svg+xml"), "PNG, JPEG, GIF or WebP"),
        (data_url(b"just some text, no image at all"), "no PNG, JPEG, GIF or WebP image"),
        (data_url(png(4, 4), "image/jpeg"), "says it is image/jpeg, but its bytes are image/png"),
        ("file:///etc/passwd", "not an image URL"),
        ("cat.jpg", "not an image URL"),
    ],
)
async def test_a_malformed_image_is_a_400_naming_its_part(openai_sdk, anthropic_sdk, fake_llm, url, says):
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_sdk.chat.completions.create(
            model="persona",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": url}}],
                }
            ],
        )
    assert refused.value.body["param"] == "messages[0].content[1]"
    assert says in refused.value.body["message"]
    assert fake_llm.chat_requests() == []


async def test_a_malformed_image_block_is_a_400_in_anthropics_shape(anthropic_sdk, fake_llm):
    bad = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        await anthropic_sdk.messages.create(
            model="persona", max_tokens=10, messages=[{"role": "user", "content": [bad]}]
        )
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert "`messages[0].content[0]`" in refused.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as counted:
        await anthropic_sdk.messages.count_tokens(model="persona", messages=[{"role": "user", "content": [bad]}])
    assert "not valid base64" in counted.value.body["error"]["message"]
    # A source this runtime cannot pass on (a file uploaded to Anthropic's Files API) names where it is.
    by_file = {"type": "image", "source": {"type": "file", "file_id": "file_1"}}
    with pytest.raises(anthropic.BadRequestError) as uploaded:
        await anthropic_sdk.messages.create(
            model="persona", max_tokens=10, messages=[{"role": "user", "content": [by_file]}]
        )
    assert "messages[0].content[0].source" in uploaded.value.body["error"]["message"]
    assert fake_llm.chat_requests() == []


async def test_an_image_in_a_system_or_assistant_message_is_refused(openai_sdk, anthropic_sdk, fake_llm):
    image = {"type": "image_url", "image_url": {"url": PHOTO_URL}}
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_sdk.chat.completions.create(
            model="persona",
            messages=[{"role": "system", "content": [image]}, {"role": "user", "content": "Hi"}],
        )
    assert refused.value.body["param"] == "messages[0].content[0]"
    block = {"type": "image", "source": {"type": "url", "url": PHOTO_URL}}
    with pytest.raises(anthropic.BadRequestError) as blocked:
        await anthropic_sdk.messages.create(
            model="persona",
            max_tokens=10,
            messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [block]}],
        )
    assert "`messages[1].content[0]`: `image` blocks belong in user turns" in blocked.value.body["error"]["message"]
    assert fake_llm.chat_requests() == []


async def test_an_unknown_detail_is_refused(openai_sdk, fake_llm):
    image = {"type": "image_url", "image_url": {"url": PHOTO_URL, "detail": "ultra"}}
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_sdk.chat.completions.create(model="persona", messages=[{"role": "user", "content": [image]}])
    assert refused.value.body["param"] == "messages[0].content[0].image_url.detail"
    assert fake_llm.chat_requests() == []


async def test_an_image_over_five_megabytes_is_a_413_naming_its_part(openai_sdk, anthropic_sdk, fake_llm):
    big = png(1, 1) + bytes(5 * 1024 * 1024)
    image = {"type": "image_url", "image_url": {"url": data_url(big)}}
    with pytest.raises(openai.APIStatusError) as refused:
        await openai_sdk.chat.completions.create(model="persona", messages=[{"role": "user", "content": [image]}])
    assert refused.value.status_code == 413
    assert refused.value.body["param"] == "messages[0].content[0]"
    assert "5 MB" in refused.value.body["message"]
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(big)}}
    with pytest.raises(anthropic.APIStatusError) as blocked:
        await anthropic_sdk.messages.create(
            model="persona", max_tokens=10, messages=[{"role": "user", "content": [block]}]
        )
    assert blocked.value.status_code == 413
    assert blocked.value.body["error"]["type"] == "request_too_large"
    assert fake_llm.chat_requests() == []


# The Responses API ---------------------------------------------------------------------------------------------


async def test_input_image_parts_reach_the_provider_and_stay_in_a_stored_chain(openai_sdk, fake_llm, make_persona):
    model = await make_persona("anthropic")
    data = png(20, 20)
    first = await openai_sdk.responses.create(
        model=model,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Remember this picture."},
                    {"type": "input_image", "image_url": data_url(data), "detail": "auto"},
                ],
            }
        ],
    )
    picture = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(data)}}
    path, content = last_user_content(fake_llm)
    assert path == "/v1/messages"
    assert content == [{"type": "text", "text": "Remember this picture."}, picture]

    # The next turn of the chain sends the picture again, as the conversation it continues.
    await openai_sdk.responses.create(model=model, previous_response_id=first.id, input="What was in it?")
    messages = fake_llm.last_request.body["messages"]
    assert messages[0]["content"] == [{"type": "text", "text": "Remember this picture."}, picture]
    assert messages[-1] == {"role": "user", "content": "What was in it?"}


async def test_input_image_is_refused_where_the_chat_routes_refuse_images(openai_sdk, fake_llm, make_persona):
    model = await make_persona("openai", vision=False)
    image = {"type": "input_image", "image_url": PHOTO_URL}
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_sdk.responses.create(model=model, input=[{"role": "user", "content": [image]}])
    assert refused.value.body["param"] == "input[0].content[0]"
    assert "takes no images" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as malformed:
        await openai_sdk.responses.create(
            model="persona", input=[{"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}]
        )
    assert malformed.value.body["param"] == "input[0].content[0]"
    with pytest.raises(openai.BadRequestError) as by_file:
        await openai_sdk.responses.create(
            model="persona", input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]
        )
    assert by_file.value.body["param"] == "input[0].content[0].image_url"
    with pytest.raises(openai.BadRequestError) as detailed:
        await openai_sdk.responses.create(
            model="persona",
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": PHOTO_URL, "detail": "max"}]}],
        )
    assert detailed.value.body["param"] == "input[0].content[0].detail"
    assert fake_llm.chat_requests() == []
