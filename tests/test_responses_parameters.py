"""/v1/responses passes its parameters on as /v1/chat/completions does: ``tool_choice``, ``parallel_tool_calls``,
``text.format`` (so the openai SDK's ``responses.parse`` works), ``user`` and OpenAI's own reach an
OpenAI-compatible provider as sent and Anthropic as its equivalents, or get a 400 naming them."""

from __future__ import annotations

import json

import openai
import pydantic
import pytest

from providers import Options, ResponseFormat, ToolChoice, refusal
from tests.fakellm import FakeToolCall
from tests.test_parameters import SCHEMA, Trip, _persona

pytestmark = pytest.mark.asyncio

TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Looks a city up.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
TRIP_FORMAT = {"type": "json_schema", "name": "trip", "schema": SCHEMA, "strict": True}


@pytest.fixture
def sdk(llm_app, alice):
    return openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=alice.key, max_retries=0)


class Weather(pydantic.BaseModel):
    city: str


async def test_every_parameter_reaches_an_openai_compatible_provider_under_its_chat_completions_name(sdk, fake_llm):
    response = await sdk.responses.create(
        model="persona/Mu",
        input="Plan a trip.",
        tools=[TOOL],
        tool_choice={"type": "function", "name": "lookup"},
        parallel_tool_calls=False,
        text={"format": TRIP_FORMAT, "verbosity": "low"},
        user="user-42",
        reasoning={"effort": "low"},
        service_tier="default",
        safety_identifier="hashed-42",
        prompt_cache_key="trips",
        metadata={"team": "travel"},
    )
    sent = fake_llm.last_request.body
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "trip", "schema": SCHEMA, "strict": True},
    }
    assert sent["tools"][0]["function"]["strict"] is True
    assert (sent["user"], sent["verbosity"], sent["reasoning_effort"]) == ("user-42", "low", "low")
    assert (sent["service_tier"], sent["safety_identifier"], sent["prompt_cache_key"]) == (
        "default",
        "hashed-42",
        "trips",
    )
    # The response is the stored conversation's business, not the provider's.
    assert "metadata" not in sent and "store" not in sent
    # The fake honours the schema; the response says what was asked for.
    assert json.loads(response.output_text) == {"city": "fake", "days": 1}
    assert response.tool_choice.type == "function" and response.tool_choice.name == "lookup"
    assert response.parallel_tool_calls is False
    assert response.text.format.type == "json_schema" and response.text.format.name == "trip"
    assert response.text.verbosity == "low"
    assert response.metadata == {"team": "travel"}


async def test_tool_choice_required_and_none_reach_the_provider(sdk, fake_llm):
    fake_llm.script(chunks=(), tool_calls=(FakeToolCall(name="lookup", arguments='{"city": "Oslo"}', id="c1"),))
    async with sdk.responses.stream(model="persona/Mu", input="Where?", tools=[TOOL], tool_choice="required") as stream:
        final = await stream.get_final_response()
    assert fake_llm.last_request.body["tool_choice"] == "required"
    assert final.output[-1].type == "function_call" and final.output[-1].name == "lookup"
    assert final.tool_choice == "required"

    await sdk.responses.create(model="persona/Mu", input="Just talk.", tools=[TOOL], tool_choice="none")
    assert fake_llm.last_request.body["tool_choice"] == "none"
    plain = await sdk.responses.create(model="persona/Mu", input="Hi", text={"format": {"type": "text"}})
    assert "response_format" not in fake_llm.last_request.body  # plain text is what every answer is
    assert plain.text.format.type == "text"


async def test_responses_parse_with_a_pydantic_model(sdk, fake_llm):
    parsed = await sdk.responses.parse(model="persona/Mu", input="Plan a trip.", text_format=Trip)
    assert parsed.output_parsed == Trip(city="fake", days=1)
    form = fake_llm.last_request.body["response_format"]
    assert form["type"] == "json_schema" and form["json_schema"]["name"] == "Trip"
    assert form["json_schema"]["strict"] is True

    async with sdk.responses.stream(model="persona/Mu", input="Plan a trip.", text_format=Trip) as stream:
        final = await stream.get_final_response()
    assert final.output_parsed == Trip(city="fake", days=1)


async def test_responses_parse_on_the_echo_provider(sdk, llm_client, alice):
    model = await _persona(llm_client, alice, "echo")
    parsed = await sdk.responses.parse(model=model, input="Plan a trip.", text_format=Trip)
    assert parsed.output_parsed == Trip(city="[echo] Plan a trip.", days=1)
    loose = await sdk.responses.create(model=model, input="Hi", text={"format": {"type": "json_object"}})
    assert json.loads(loose.output_text) == {"echo": "[echo] Hi"}
    forced = await sdk.responses.create(
        model=model, input="Hi", tools=[TOOL], tool_choice={"type": "function", "name": "lookup"}
    )
    call = forced.output[-1]
    assert call.type == "function_call" and call.name == "lookup"
    assert Weather.model_validate_json(call.arguments) == Weather(city="")


async def test_anthropic_gets_the_equivalents(sdk, llm_client, alice, fake_llm):
    model = await _persona(llm_client, alice, "anthropic")
    parsed = await sdk.responses.parse(
        model=model,
        input="Plan a trip.",
        text_format=Trip,
        tools=[TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        user="user-42",
    )
    sent = fake_llm.last_request.body
    assert fake_llm.last_request.path == "/v1/messages"
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert sent["output_config"]["format"]["schema"]["required"] == ["city", "days"]
    assert sent["metadata"] == {"user_id": "user-42"}
    assert parsed.output_parsed == Trip(city="fake", days=1)

    await sdk.responses.create(
        model=model, input="Hi", tools=[TOOL], tool_choice={"type": "function", "name": "lookup"}
    )
    assert fake_llm.last_request.body["tool_choice"] == {"type": "tool", "name": "lookup"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"reasoning": {"effort": "low"}}, "reasoning.effort"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"service_tier": "default"}, "service_tier"),
    ],
)
async def test_what_anthropic_has_no_equivalent_for_is_a_400_naming_it(sdk, llm_client, alice, fake_llm, extra, param):
    model = await _persona(llm_client, alice, "anthropic")
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.responses.create(model=model, input="Hi", **extra)
    assert refused.value.body["param"] == param and f"`{param}`" in refused.value.body["message"]
    assert fake_llm.chat_requests() == []


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tool offered
        ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "nowhere"}}, "tool_choice"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "trip"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "json_schema", "schema": SCHEMA}}}, "text.format.name"),
        ({"text": {"format": {"type": "grammar", "definition": "x"}}}, "text.format"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"max_tool_calls": 2}, "max_tool_calls"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"stream_options": {"include_obfuscation": True}, "stream": True}, "stream_options.include_obfuscation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ],
)
async def test_what_no_provider_is_asked_for_is_a_400_naming_it(sdk, fake_llm, extra, param):
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.responses.create(model="persona/Mu", input="Hi", **extra)
    assert (refused.value.body.get("param") or "").startswith(param), refused.value.body
    assert fake_llm.chat_requests() == []


async def test_no_op_values_are_accepted_and_not_sent(sdk, fake_llm):
    await sdk.responses.create(
        model="persona/Mu",
        input="Hi",
        top_logprobs=0,
        include=[],
        truncation="disabled",
        stream_options={"include_obfuscation": False},
        stream=False,
    )
    sent = fake_llm.last_request.body
    assert not {"top_logprobs", "include", "truncation", "logprobs"} & set(sent)
    assert sent["stream_options"] == {"include_usage": True}  # the runtime's own, for the usage it reports


async def test_a_plugin_provider_without_refuses_is_not_refused_what_it_does_anyway():
    # What the Vercel AI SDK sends with every request that has tools, on either route.
    class Plugin:
        name, kind, default_model = "mine", "mine", "m"

    defaults = Options(
        tool_choice=ToolChoice(type="auto"), parallel_tool_calls=True, response_format=ResponseFormat(type="text")
    )
    assert refusal(Plugin(), defaults) is None  # type: ignore[arg-type]
    for asked, name in (
        (Options(tool_choice=ToolChoice(type="required")), "tool_choice"),
        (Options(parallel_tool_calls=False), "parallel_tool_calls"),
        (Options(response_format=ResponseFormat(type="json_object")), "response_format"),
    ):
        refused = refusal(Plugin(), asked)  # type: ignore[arg-type]
        assert refused is not None and refused[0] == name
