"""User-given regular expressions (test suites' ``expect.regex``): bounded, compiled off the loop, cached, timed."""

from __future__ import annotations

import uuid

import pytest
import regex

from core import patterns
from core.errors import BadRequest

PERSONAS = "/api/v1/chat/personas"


async def make_persona(http, account):
    body = {
        "name": f"Patterns {uuid.uuid4().hex[:10]}",
        "description": "d",
        "system_prompt": "You are {{persona_name}}.",
    }
    r = await http.post(PERSONAS, json=body, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def post_test(http, account, persona_id, pattern, message="m", name="t"):
    body = {"name": name, "message": message, "expect": {"regex": pattern}}
    return await http.post(f"{PERSONAS}/{persona_id}/tests", json=body, headers=account.headers)


async def run_suite(http, account, persona_id):
    r = await http.post(f"{PERSONAS}/{persona_id}/tests/run", headers=account.headers)
    assert r.status_code == 200, r.text
    return {x["name"]: x for x in r.json()["results"]}


async def test_the_probe_that_took_the_server_down_is_a_400_naming_the_field(client, alice):
    persona = await make_persona(client, alice)
    r = await post_test(client, alice, persona["id"], "a{2147483647}")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["field"] == "expect.regex"
    assert "2,147,483,647" in r.json()["message"] and "1,000" in r.json()["message"]
    assert (await client.get(f"{PERSONAS}/{persona['id']}/tests", headers=alice.headers)).json()["total"] == 0


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("a{1001}", "more than 1,000"),
        ("a{1001,}", "more than 1,000"),
        ("a{,1001}", "more than 1,000"),
        ("a{2,1001}?", "more than 1,000"),
        ("(?:a{1000}){1000}b", "more than 10,000"),  # 140 MB each on main, kept after the persona went
        ("(?:a{100}){101}", "more than 10,000"),
        ("(?:(?:a{10}){10}){101}", "more than 10,000"),
        ("a{1000}" * 11, "more than 10,000"),  # counts add up as well as multiply
        ("(?:[ab]{1000}|c){11}", "more than 10,000"),
        # Verbose mode hides nothing: the bounds are read from the engine's own parse of the pattern.
        ("(?x) # [ a comment, not a class\n(?:a{1000}){1000}\n]", "more than 10,000"),
        ("a" * 1001, "1000"),
        ("(unclosed", "not a valid regular expression"),
        ("a{4294967296}", "not a valid regular expression"),
    ],
)
async def test_patterns_over_a_bound_are_refused_at_save_saying_the_limit(client, alice, pattern, says):
    persona = await make_persona(client, alice)
    r = await post_test(client, alice, persona["id"], pattern)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "expect.regex"
    assert says in r.json()["message"], r.text


async def test_patterns_at_the_bounds_work_in_a_suite_run(client, alice):
    persona = await make_persona(client, alice)
    pid = persona["id"]
    # The echo provider answers "[echo] " + the message.
    at_bounds = {
        "nested": ("(?:a{100}){100}", "a" * 10_000),
        "flat": ("a{1000}" * 10, "a" * 10_000),
        "counted": ("x{1000}", "x" * 1000),
        "long": ("b" * 1000, "b" * 1000),
    }
    for name, (pattern, message) in at_bounds.items():
        r = await post_test(client, alice, pid, pattern, message=message, name=name)
        assert r.status_code == 201, (name, r.text)
    r = await post_test(client, alice, pid, "(?:a{100}){100}", message="b" * 10_000, name="no match")
    assert r.status_code == 201, r.text
    results = await run_suite(client, alice, pid)
    for name in at_bounds:
        assert results[name]["passed"] is True, results[name]
    assert results["no match"]["failures"] == ["expected the answer to match the regex '(?:a{100}){100}'"]


async def test_catastrophic_backtracking_on_a_long_answer_fails_the_check_on_its_time_budget(client, alice):
    persona = await make_persona(client, alice)
    r = await post_test(client, alice, persona["id"], "(a|aa)+$", message="a" * 5000 + "!", name="runaway")
    assert r.status_code == 201, r.text
    [failure] = (await run_suite(client, alice, persona["id"]))["runaway"]["failures"]
    assert failure.startswith(f"the regex '(a|aa)+$' took too long (more than {patterns.MATCH_SECONDS} s)"), failure


async def test_a_stored_pattern_from_before_the_bounds_fails_its_check_with_the_reason(client, alice, resources):
    persona = await make_persona(client, alice)
    r = await post_test(client, alice, persona["id"], "a", message="a", name="old")
    assert r.status_code == 201, r.text
    # A test saved before the bounds existed: its pattern is in the database as it was written.
    expect = {"contains": [], "not_contains": [], "regex": "(?:a{1000}){1000}"}
    await resources.pool.execute(
        "UPDATE persona_tests SET expect = $1 WHERE name = 'old' AND persona_id = $2",
        expect,
        uuid.UUID(persona["id"]),
    )
    [failure] = (await run_suite(client, alice, persona["id"]))["old"]["failures"]
    assert failure.startswith("the regex '(?:a{1000}){1000}' cannot be used: `expect.regex` expands to 1,000,000")


def test_the_cache_drops_the_least_recently_used_past_either_bound():
    cache = patterns.PatternCache(most=3, most_bytes=1000)
    compiled = {name: regex.compile(name, cache_pattern=False) for name in "abcde"}
    for name in "abc":
        cache.put(name, 0, compiled[name], 100)
    assert cache.get("a", 0) is compiled["a"]  # now the most recently used
    cache.put("d", 0, compiled["d"], 100)
    assert len(cache) == 3 and cache.get("b", 0) is None and cache.get("a", 0) is compiled["a"]
    cache.put("e", 0, compiled["e"], 800)  # past the bytes: the least recently used go until it fits
    assert cache.bytes == 1000 and cache.get("c", 0) is None
    assert [cache.get(name, 0) for name in "dae"] == [compiled[name] for name in "dae"]
    cache.put("big", 0, compiled["a"], 5000)  # one larger than the bound alone is kept, and only it
    assert len(cache) == 1 and cache.bytes == 5000


async def test_the_process_cache_stays_within_its_bounds_and_keeps_the_latest():
    cache = patterns.cached()
    heavy = [f"(?:a{{100}}){{99}}b{n}" for n in range(40)]  # each close to the expansion bound
    for pattern in heavy:
        await patterns.compile_pattern(pattern, field="f")
    assert cache.bytes <= patterns.CACHE_BYTES and len(cache) <= patterns.CACHE_PATTERNS
    assert cache.get(heavy[-1], 0) is not None
    assert cache.get(heavy[0], 0) is None, "40 patterns of ~3 MB each should not all fit in the cache"
    again = await patterns.compile_pattern(heavy[-1], field="f")
    assert again is cache.get(heavy[-1], 0)


async def test_running_out_of_memory_while_compiling_is_a_400(monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(patterns.regex, "compile", exhausted)
    with pytest.raises(BadRequest) as caught:
        await patterns.compile_pattern(f"never compiled {uuid.uuid4().hex}", field="expect.regex")
    assert caught.value.field == "expect.regex" and "memory" in caught.value.message
