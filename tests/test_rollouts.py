"""Rollouts (contract section 16): a share of users, picked by a stable hash of user and persona, gets another
version; each keeps their variant; the rollout is ended, or promoted by pinning production."""

from __future__ import annotations

import math
import uuid

from personas.models import Caller
from personas.releases import in_rollout
from runtime.chat.resolve import serve_version
from tests.test_labels import CHAT, PERSONAS, chat, saved_twice, system_sent


def caller_of(user_id: uuid.UUID) -> Caller:
    return Caller(user_id=user_id, user_name="someone", display_name=None, is_admin=False)


async def test_a_half_rollout_splits_users_within_binomial_bounds_and_each_keeps_their_variant(
    client, resources, alice
):
    persona = await saved_twice(client, alice, visibility="public")
    r = await client.put(
        f"{PERSONAS}/{persona['id']}/rollout", json={"version": 1, "percent": 50}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    stored = await resources.personas.store.get(uuid.UUID(persona["id"]))
    assert stored is not None

    users = [uuid.uuid4() for _ in range(400)]
    served = {}
    for user in users:
        version, variant = await serve_version(resources.personas, caller_of(user), stored, None, field="persona_id")
        assert (version.version, variant) in {(1, "rollout"), (2, "production")}
        served[user] = variant
    in_rollout_count = sum(variant == "rollout" for variant in served.values())
    sigma = math.sqrt(len(users) * 0.5 * 0.5)
    assert abs(in_rollout_count - len(users) / 2) <= 3 * sigma, in_rollout_count

    for user in users[:100]:  # asked again, every user gets what they got before
        _, variant = await serve_version(resources.personas, caller_of(user), stored, None, field="persona_id")
        assert variant == served[user]


async def test_rollout_users_get_the_rollout_version_on_every_turn_and_stored_answers_say_so(
    llm_client, fake_llm, make_user, alice
):
    persona = await saved_twice(llm_client, alice, visibility="public")
    pid = persona["id"]
    r = await llm_client.put(f"{PERSONAS}/{pid}/rollout", json={"version": 1, "percent": 50}, headers=alice.headers)
    assert r.status_code == 200
    seen = set()
    for _ in range(16):
        user = await make_user("rollout")
        expected = "rollout" if in_rollout(user.user.id, uuid.UUID(pid), 50) else "production"
        seen.add(expected)
        conversation = None
        for _turn in range(2):
            more = {"conversation_id": conversation} if conversation else {}
            r = await chat(llm_client, user, pid, **more)
            assert r.status_code == 200, r.text
            conversation = r.json()["conversation_id"]
            version = 1 if expected == "rollout" else 2
            assert r.json()["persona"]["version"] == version
            assert system_sent(fake_llm).startswith(f"You are version {'one' if version == 1 else 'two'}.")
        messages = (await llm_client.get(f"{CHAT}/conversations/{conversation}", headers=user.headers)).json()[
            "messages"
        ]
        assert [m["variant"] for m in messages] == [None, expected, None, expected]
    assert seen == {"rollout", "production"}  # 16 users at 50%: both variants (a 1 in 32,768 chance otherwise)


async def test_a_rollout_is_shown_ended_and_promoted_through_the_api(client, alice, bob):
    persona = await saved_twice(client, alice, visibility="public")
    rollout = f"{PERSONAS}/{persona['id']}/rollout"
    r = await client.get(rollout, headers=alice.headers)
    assert r.status_code == 200 and r.json()["rollout"] is None

    r = await client.put(rollout, json={"version": 1, "percent": 100}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["rollout"] == {"version": 1, "percent": 100}
    assert (await client.get(rollout, headers=alice.headers)).json()["rollout"] == {"version": 1, "percent": 100}
    r = await chat(client, bob, persona["id"])
    assert r.json()["persona"]["version"] == 1  # 100%: everyone

    # Ended: everyone gets production.
    assert (await client.delete(rollout, headers=alice.headers)).status_code == 200
    assert (await client.get(rollout, headers=alice.headers)).json()["rollout"] is None
    assert (await chat(client, bob, persona["id"])).json()["persona"]["version"] == 2
    r = await client.delete(rollout, headers=alice.headers)
    assert r.status_code == 404 and r.json()["error"]["field"] == "rollout"

    # Promoted: pinning production to the rollout's version ends the rollout.
    r = await client.put(rollout, json={"version": 1, "percent": 10}, headers=alice.headers)
    assert r.status_code == 200
    r = await client.put(f"{PERSONAS}/{persona['id']}/labels/production", json={"version": 1}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["labels"]["production"] == {"version": 1, "pinned": True}
    assert (await client.get(rollout, headers=alice.headers)).json()["rollout"] is None
    assert (await chat(client, bob, persona["id"])).json()["persona"]["version"] == 1


async def test_only_the_owner_or_an_admin_manages_a_rollout_and_its_body_is_checked(client, alice, bob, admin):
    persona = await saved_twice(client, alice, visibility="public")
    rollout = f"{PERSONAS}/{persona['id']}/rollout"
    assert (await client.put(rollout, json={"version": 1, "percent": 5}, headers=bob.headers)).status_code == 403
    assert (await client.get(rollout, headers=bob.headers)).status_code == 403
    assert (await client.delete(rollout, headers=bob.headers)).status_code == 403
    assert (await client.put(rollout, json={"version": 1, "percent": 5}, headers=admin.headers)).status_code == 200

    for body, field in (
        ({"version": 1, "percent": 0}, "percent"),
        ({"version": 1, "percent": 101}, "percent"),
        ({"version": 1}, "percent"),
        ({"version": 1, "percent": 5, "extra": 1}, "extra"),
    ):
        r = await client.put(rollout, json=body, headers=alice.headers)
        assert r.status_code == 400 and field in r.json()["message"], (body, r.text)
    r = await client.put(rollout, json={"version": 3, "percent": 5}, headers=alice.headers)
    assert r.status_code == 404 and r.json()["error"]["field"] == "version"
