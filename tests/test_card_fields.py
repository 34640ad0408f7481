"""Cards in full: SillyTavern's `{{char}}` and `{{user}}` in templates, greetings, example messages and scenario."""

from __future__ import annotations

import pytest

from core.errors import BadRequest
from personas.template import check_template, fill_names, render_template, stable_prefix
from tests.conftest import persona_body

CHAT = "/api/v1/chat"
PERSONAS = "/api/v1/chat/personas"


def fill(template: str) -> str:
    return render_template(
        template, user_name="Robin", persona_name="Sera", date="2025-01-01", traits={}, capabilities={}
    )


# {{char}} and {{user}} --------------------------------------------------------------------------------


def test_char_and_user_are_the_persona_and_user_names():
    check_template("{{char}} greets {{user}}; {{ char }} again.")  # accepted, spaces and all
    assert fill("{{char}} greets {{user}}; {{ char }} again.") == "Sera greets Robin; Sera again."
    assert fill("{{char}}/{{persona_name}} {{user}}/{{user_name}}") == "Sera/Sera Robin/Robin"


@pytest.mark.parametrize("template", ["{{Char}} waves", "{{chars}} wave", "{{user_names}}"])
def test_near_misses_of_the_aliases_are_still_refused(template):
    with pytest.raises(BadRequest, match="unknown template variable"):
        check_template(template)


def test_user_is_a_per_user_value_for_the_prompt_cache():
    at, variable = stable_prefix("You are {{char}}. Talk to {{user}}.", persona_name="Sera", traits={}, capabilities={})
    assert (at, variable) == (len("You are Sera. Talk to "), "user")
    whole, none = stable_prefix("You are {{char}}.", persona_name="Sera", traits={}, capabilities={})
    assert (whole, none) == (len("You are Sera."), None)


async def test_the_api_accepts_the_aliases_and_the_model_gets_the_names(llm_client, fake_llm, alice):
    body = persona_body(system_prompt="You are {{char}}. Be kind to {{user}}.")
    r = await llm_client.post(PERSONAS, json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    persona = r.json()["persona"]
    assert persona["system_prompt"] == "You are {{char}}. Be kind to {{user}}."

    fake_llm.script(chunks=("hi",))
    r = await llm_client.post(CHAT, json={"message": "hello", "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text
    system = fake_llm.last_request.body["messages"][0]["content"]
    assert system.startswith(f"You are {persona['name']}. Be kind to Alice.")

    r = await llm_client.put(
        f"{PERSONAS}/{persona['id']}", json={"system_prompt": "{{user}} first, then {{char}}."}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/render", json={"message": "hi"}, headers=alice.headers)
    body = r.json()
    assert body["system_prompt"].startswith(f"Alice first, then {persona['name']}.")
    assert body["cacheable_prefix_chars"] == 0
    assert any("{{user}}" in warning for warning in body["warnings"])


def test_names_are_filled_in_text_that_is_not_a_template():
    text = "{{char}} ({{persona_name}}) greets {{user}} ({{user_name}}); {{random:a,b}} and { braces } stay."
    assert fill_names(text, persona_name="Sera", user_name="Robin") == (
        "Sera (Sera) greets Robin (Robin); {{random:a,b}} and { braces } stay."
    )
