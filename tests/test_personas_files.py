"""Personas as files: ``persona-runtime personas export/import DIR`` against fresh databases."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from PIL import Image, PngImagePlugin

from runtime.server.cli import main
from tests.test_cards import v2_card


def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def fresh_db(create_database, monkeypatch, tmp_path) -> str:
    """A migrated, empty database that the CLI talks to through DATABASE_URL."""
    dsn = asyncio.run(create_database())
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    assert main(["migrate"]) == 0
    return dsn


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def document(name: str, **persona: Any) -> dict[str, Any]:
    body = {"name": name, "description": f"{name} for tests.", "system_prompt": "You are {{persona_name}}."}
    body.update(persona)
    return {"format": "persona-runtime/v1", "persona": body}


def write(directory: Path, file: str, value: Any) -> None:
    directory.mkdir(exist_ok=True)
    (directory / file).write_text(json.dumps(value), encoding="utf-8")


def versions(dsn: str) -> dict[str, int]:
    return {r["name"]: r["version"] for r in query(dsn, "SELECT name, version FROM personas WHERE is_active")}


def test_import_creates_then_a_second_run_changes_nothing(fresh_db, tmp_path, capsys):
    source = tmp_path / "source"
    write(source, "quill.json", document("Quill", personality_traits={"tone": "dry"}, visibility="public"))
    write(source, "sera.json", v2_card(name="Seraphina"))

    code, out, _ = cli(capsys, "personas", "import", str(source))
    assert code == 0
    assert "created   Quill (quill.json)" in out and "created   Seraphina (sera.json)" in out
    assert out.strip().endswith("2 created")
    sql = "SELECT name, created_by, visibility, version FROM personas WHERE name <> 'Mu' ORDER BY name"
    rows = query(fresh_db, sql)
    assert [(r["name"], r["created_by"], r["visibility"], r["version"]) for r in rows] == [
        ("Quill", None, "public", 1),
        ("Seraphina", None, "private", 1),
    ]

    code, out, _ = cli(capsys, "personas", "import", str(source))
    assert code == 0
    assert "unchanged Quill (quill.json)" in out
    assert out.strip().endswith("nothing changed: 2 unchanged")
    assert versions(fresh_db) == {"Mu": 1, "Quill": 1, "Seraphina": 1}
    assert len(query(fresh_db, "SELECT 1 FROM persona_versions")) == 3


def test_import_updates_by_name_regardless_of_case(fresh_db, tmp_path, capsys):
    source = tmp_path / "source"
    write(source, "quill.json", document("Quill"))
    assert cli(capsys, "personas", "import", str(source))[0] == 0
    write(source, "quill.json", document("QUILL", description="Edited in git."))

    code, out, _ = cli(capsys, "personas", "import", str(source))
    assert code == 0 and "updated   QUILL (quill.json)" in out
    row = query(fresh_db, "SELECT name, description, version FROM personas WHERE lower(name) = 'quill'")[0]
    assert (row["name"], row["description"], row["version"]) == ("QUILL", "Edited in git.", 2)
    note = query(fresh_db, "SELECT change_note FROM persona_versions WHERE version = 2")[0]["change_note"]
    assert note == "imported from quill.json"


def test_export_then_import_into_another_database_round_trips(fresh_db, create_database, tmp_path, capsys, monkeypatch):
    source = tmp_path / "source"
    write(source, "quill.json", document("Quill", capabilities={"editing": True}, tools=[{"name": "lookup"}]))
    write(source, "sera.json", v2_card(name="Seraphina"))
    assert cli(capsys, "personas", "import", str(source))[0] == 0

    first = tmp_path / "first"
    code, out, _ = cli(capsys, "personas", "export", str(first))
    assert code == 0 and out.strip().endswith("3 written")
    assert sorted(p.name for p in first.iterdir()) == ["mu.json", "quill.json", "seraphina.json"]
    text = (first / "quill.json").read_text()
    assert text.startswith('{\n  "format": "persona-runtime/v1",\n  "persona": {\n    "name": "Quill",')
    assert text.endswith("}\n")
    kept = json.loads((first / "seraphina.json").read_text())["extensions"]["card"]["data"]
    assert kept["extensions"]["depth_prompt"] == {"prompt": "Be kind.", "depth": 4}

    # Exporting again rewrites nothing.
    code, out, _ = cli(capsys, "personas", "export", str(first))
    assert (
        out.strip()
        == "\n".join(["unchanged Mu (mu.json)", "unchanged Quill (quill.json)", "unchanged Seraphina (seraphina.json)"])
        + "\nnothing changed: 3 unchanged"
    )

    other = asyncio.run(create_database())
    monkeypatch.setenv("DATABASE_URL", other)
    assert main(["migrate"]) == 0
    code, out, _ = cli(capsys, "personas", "import", str(first))
    assert code == 0 and "unchanged Mu (mu.json)" in out and out.strip().endswith("2 created, 1 unchanged")
    second = tmp_path / "second"
    assert cli(capsys, "personas", "export", str(second))[0] == 0
    for file in first.iterdir():
        assert (second / file.name).read_bytes() == file.read_bytes(), file.name


def test_owner_option_owns_new_personas(fresh_db, tmp_path, capsys):
    code, out, _ = cli(capsys, "users", "create", "olga")
    olga = out.strip()
    source = tmp_path / "source"
    write(source, "quill.json", document("Quill"))
    assert cli(capsys, "personas", "import", str(source), "--owner", "olga")[0] == 0
    assert str(query(fresh_db, "SELECT created_by FROM personas WHERE name = 'Quill'")[0]["created_by"]) == olga

    code, _, err = cli(capsys, "personas", "import", str(source), "--owner", "nobody")
    assert code == 1 and "no user named 'nobody'" in err


def test_one_bad_file_refuses_the_whole_directory(fresh_db, tmp_path, capsys):
    source = tmp_path / "source"
    write(source, "a-good.json", document("Good"))
    write(source, "b-bad.json", document("Bad", system_prompt="Hello {{mood}}"))
    write(source, "c-twin.json", document("good"))
    (source / "d-broken.json").write_text("{not json", encoding="utf-8")
    (source / "notes.txt").write_text("ignored: not a persona file", encoding="utf-8")

    code, out, err = cli(capsys, "personas", "import", str(source))
    assert code == 1 and out == ""
    assert "nothing was imported" in err
    assert "b-bad.json: `system_prompt` uses unknown template variable {{mood}}" in err
    assert "c-twin.json: persona 'good' is also defined by a-good.json" in err
    assert "d-broken.json: The document is not valid JSON" in err
    assert "notes.txt" not in err
    assert versions(fresh_db) == {"Mu": 1}


def test_export_names_files_by_slug_without_clashes(fresh_db, tmp_path, capsys):
    source = tmp_path / "source"
    write(source, "1.json", document("Dr. Who?"))
    write(source, "2.json", document("dr who"))
    write(source, "3.json", document("???"))
    assert cli(capsys, "personas", "import", str(source))[0] == 0
    target = tmp_path / "target"
    assert cli(capsys, "personas", "export", str(target))[0] == 0
    names = {json.loads(p.read_text())["persona"]["name"]: p.name for p in target.iterdir()}
    # Ordered by name ("dr who" sorts before "dr. who?"), so the same set always gets the same file names.
    assert names == {"dr who": "dr-who.json", "Dr. Who?": "dr-who-2.json", "???": "persona.json", "Mu": "mu.json"}


def test_import_of_a_missing_directory_fails_cleanly(fresh_db, tmp_path, capsys):
    code, _, err = cli(capsys, "personas", "import", str(tmp_path / "nowhere"))
    assert code == 1 and "not a directory" in err


def test_a_png_cards_picture_becomes_the_avatar_and_changes_only_when_the_picture_does(fresh_db, tmp_path, capsys):
    def card_file(colour: tuple[int, int, int]) -> bytes:
        info = PngImagePlugin.PngInfo()
        info.add_text("chara", base64.b64encode(json.dumps(v2_card(name="Painted")).encode()).decode())
        out = io.BytesIO()
        Image.new("RGB", (6, 9), colour).save(out, "PNG", pnginfo=info)
        return out.getvalue()

    def avatar() -> bytes:
        sql = "SELECT a.bytes FROM persona_avatars a JOIN personas p ON p.id = a.persona_id WHERE p.name = 'Painted'"
        (row,) = query(fresh_db, sql)
        return bytes(row["bytes"])

    source = tmp_path / "source"
    source.mkdir()
    (source / "painted.png").write_bytes(card_file((200, 0, 0)))
    code, out, _ = cli(capsys, "personas", "import", str(source))
    assert code == 0 and "created   Painted (painted.png)" in out
    with Image.open(io.BytesIO(avatar())) as first:
        assert first.size == (6, 9) and first.convert("RGB").getpixel((0, 0)) == (200, 0, 0)
        assert "chara" not in first.info  # the card's text stays out of the picture

    code, out, _ = cli(capsys, "personas", "import", str(source))
    assert out.strip().endswith("nothing changed: 1 unchanged")

    (source / "painted.png").write_bytes(card_file((0, 0, 200)))
    code, out, _ = cli(capsys, "personas", "import", str(source))
    assert code == 0 and "updated   Painted (painted.png)" in out
    with Image.open(io.BytesIO(avatar())) as second:
        assert second.convert("RGB").getpixel((0, 0)) == (0, 0, 200)
    assert versions(fresh_db)["Painted"] == 1  # the persona itself did not change
