"""file_read and knowledge_lookup on real files: escapes refused, FTS5 kept up to date."""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.errors import ToolFailed, ToolRefused
from bot.tools.file_read import FileRead
from bot.tools.knowledge import KnowledgeLookup, index_path, search_workspace
from persona import Persona
from tests.support.tools import context, personas


@pytest.fixture
def people(data_dir: Path) -> dict[str, Persona]:
    found = personas(data_dir)
    (found["guest"].workspace / "notes").mkdir()
    (found["guest"].workspace / "notes" / "hello.md").write_text("# Hello\nguest notes\n")
    (found["admin"].workspace / "secret.txt").write_text("the admin's private plans\n")
    return found


async def read(persona: Persona, data_dir: Path, path: str, **limits: Any) -> str:
    return await FileRead().run({"path": path}, context(persona, data_dir, **limits))


async def test_reads_a_file_inside_the_workspace(people: dict[str, Persona],
                                                 data_dir: Path) -> None:
    assert await read(people["guest"], data_dir, "notes/hello.md") == "# Hello\nguest notes\n"
    assert await read(people["guest"], data_dir, "./notes//hello.md") == "# Hello\nguest notes\n"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../../etc/passwd", "'..'"),
        ("notes/../../admin/secret.txt", "'..'"),
        ("../admin/secret.txt", "'..'"),
        ("~/.ssh/id_rsa", "~"),
        ("~root/.bashrc", "~"),
        ("/etc/passwd", "absolute"),
        ("//etc/passwd", "absolute"),
    ],
)
async def test_escapes_by_path_are_refused(people: dict[str, Persona], data_dir: Path,
                                           path: str, reason: str) -> None:
    with pytest.raises(ToolRefused) as caught:
        await read(people["guest"], data_dir, path)
    assert reason in str(caught.value)


async def test_symlinks_that_leave_are_refused_and_those_that_stay_are_followed(
        people: dict[str, Persona], data_dir: Path) -> None:
    guest = people["guest"].workspace
    (guest / "passwd").symlink_to("/etc/passwd")
    (guest / "admin-secret").symlink_to(people["admin"].workspace / "secret.txt")
    (guest / "admin-dir").symlink_to(people["admin"].workspace, target_is_directory=True)
    (guest / "inside").symlink_to(guest / "notes" / "hello.md")
    for link in ("passwd", "admin-secret", "admin-dir/secret.txt"):
        with pytest.raises(ToolRefused, match="outside the workspace"):
            await read(people["guest"], data_dir, link)
    assert await read(people["guest"], data_dir, "inside") == "# Hello\nguest notes\n"


async def test_fifos_sockets_devices_and_directories_are_refused_without_blocking(
        people: dict[str, Persona], data_dir: Path) -> None:
    guest = people["guest"].workspace
    os.mkfifo(guest / "pipe")  # opening this for reading would wait for a writer forever
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(guest / "sock"))
    (guest / "null").symlink_to("/dev/null")
    try:
        for name, kind in (("pipe", "FIFO"), ("sock", "socket"), ("notes", "directory")):
            with pytest.raises(ToolRefused, match=kind):
                await read(people["guest"], data_dir, name)
        with pytest.raises(ToolRefused, match="outside the workspace"):
            await read(people["guest"], data_dir, "null")
    finally:
        listener.close()


async def test_a_device_inside_the_workspace_is_refused(people: dict[str, Persona],
                                                        data_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    os.mknod(people["guest"].workspace / "zero", 0o600 | 0o020000, os.makedev(1, 5))
    with pytest.raises(ToolRefused, match="device"):
        await read(people["guest"], data_dir, "zero")


async def test_large_files_are_cut_with_a_note_and_oversize_files_refused(
        people: dict[str, Persona], data_dir: Path) -> None:
    guest = people["guest"].workspace
    (guest / "long.txt").write_text("a" * 5000)
    text = await read(people["guest"], data_dir, "long.txt", read_bytes=1000)
    assert text.startswith("a" * 1000) and "a" * 1001 not in text
    assert "cut after the first 1000 of 5000 bytes" in text
    with pytest.raises(ToolRefused, match="over the 4000-byte limit"):
        await read(people["guest"], data_dir, "long.txt", max_file_bytes=4000)
    (guest / "blob.bin").write_bytes(b"\x7fELF\x00\x00binary")
    with pytest.raises(ToolRefused, match="binary"):
        await read(people["guest"], data_dir, "blob.bin")


async def test_missing_files_and_workspaces_say_so(people: dict[str, Persona],
                                                   data_dir: Path) -> None:
    with pytest.raises(ToolFailed, match=r"no file 'nope\.md'"):
        await read(people["guest"], data_dir, "nope.md")
    fresh = personas(data_dir / "other", visitor={"role": "guest",
                                                  "workspace": str(data_dir / "missing")})
    (data_dir / "missing").rmdir()
    with pytest.raises(ToolFailed, match="no files yet"):
        await read(fresh["visitor"], data_dir, "a.md")


# --- knowledge_lookup ---------------------------------------------------------------------


async def lookup(persona: Persona, data_dir: Path, query: str) -> str:
    return await KnowledgeLookup().run({"query": query}, context(persona, data_dir))


async def test_lookup_finds_notes_with_path_and_snippet(people: dict[str, Persona],
                                                        data_dir: Path) -> None:
    guest = people["guest"].workspace
    (guest / "notes" / "garden.md").write_text(
        "# Garden\nThe tomatoes need watering every morning in July.\n")
    (guest / "recipes.txt").write_text("Soup: boil the tomatoes with basil.\n")
    (guest / "image.png").write_bytes(b"tomatoes " * 10)  # not a note: never indexed
    result = await lookup(people["guest"], data_dir, "tomatoes watering")
    assert result.startswith("notes/garden.md:")
    assert "[watering]" in result and "recipes.txt" not in result
    either = await lookup(people["guest"], data_dir, "tomato basil")  # porter: tomato~tomatoes
    assert "recipes.txt" in either
    assert "image.png" not in await lookup(people["guest"], data_dir, "tomatoes")


async def test_lookup_reindexes_changed_files_and_forgets_deleted_ones(
        people: dict[str, Persona], data_dir: Path) -> None:
    note = people["guest"].workspace / "plan.md"
    note.write_text("alpha meeting on monday\n")
    assert "plan.md" in await lookup(people["guest"], data_dir, "alpha")
    note.write_text("beta meeting on tuesday, a longer line than before\n")
    assert "No notes" in await lookup(people["guest"], data_dir, "alpha")
    assert "plan.md" in await lookup(people["guest"], data_dir, "beta")
    note.unlink()
    assert "No notes" in await lookup(people["guest"], data_dir, "beta")
    root = people["guest"].workspace.resolve()
    with sqlite3.connect(index_path(data_dir, root)) as db:
        assert db.execute("select path from files").fetchall() == [("notes/hello.md",)]
        assert db.execute("select path from notes").fetchall() == [("notes/hello.md",)]


def test_unchanged_files_are_not_read_again(people: dict[str, Persona], data_dir: Path) -> None:
    from bot.tools.knowledge import _open_index, update_index

    workspace = people["guest"].workspace
    (workspace / "one.md").write_text("one\n")
    root = workspace.resolve()
    path = index_path(data_dir, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_index(path) as db:
        assert update_index(db, root, max_file_bytes=1 << 20, max_files=100) == 2
        assert update_index(db, root, max_file_bytes=1 << 20, max_files=100) == 0
        (workspace / "two.md").write_text("two\n")
        assert update_index(db, root, max_file_bytes=1 << 20, max_files=100) == 1


async def test_lookup_stays_inside_the_persona_workspace(people: dict[str, Persona],
                                                         data_dir: Path) -> None:
    guest = people["guest"].workspace
    (guest / "linked.md").symlink_to(people["admin"].workspace / "secret.txt")
    (guest / "admin").symlink_to(people["admin"].workspace, target_is_directory=True)
    (guest / ".hidden").mkdir()
    (guest / ".hidden" / "plans.md").write_text("private plans\n")
    assert "No notes" in await lookup(people["guest"], data_dir, "private plans")
    assert "secret.txt" in await lookup(people["admin"], data_dir, "private plans")


async def test_a_query_with_fts_syntax_is_searched_as_words(people: dict[str, Persona],
                                                            data_dir: Path) -> None:
    (people["guest"].workspace / "q.md").write_text("near and not or\n")
    assert "q.md" in await lookup(people["guest"], data_dir, 'NEAR("and" NOT) OR*')
    with pytest.raises(ToolFailed, match="at least one word"):
        search_workspace(people["guest"].workspace, data_dir, '"*"')
