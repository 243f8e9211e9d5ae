"""knowledge_lookup: full-text search over the notes in the persona's workspace (SQLite FTS5).

Where the index lives: one SQLite file per workspace under `<data dir>/knowledge/`, named
after a hash of the workspace's real path, not a table in the store. Reasons:

- The index is a cache of files that are the truth; it can be deleted at any time and is
  rebuilt on the next lookup. It needs no migrations and no backups, and a schema change is
  handled by rebuilding it (its `user_version` is checked on open).
- The store's URL may point at PostgreSQL (design: "no assumption that the store is a local
  file"); FTS5 is SQLite's. A local file works whatever the store is.
- Indexing a large workspace writes a lot; in its own file it never holds the store's single
  writer lock, so chats are not kept waiting by it.
- Keyed by workspace, not persona: two personas sharing a folder share one index, and a
  persona pointed at another folder gets a fresh one.

Indexing is incremental: each lookup walks the workspace, re-reads only files whose size or
mtime changed, and drops files that are gone. Only text notes are indexed (`.md`, `.txt`, ...),
hidden folders are skipped, and links that lead out of the workspace are ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ToolFailed
from bot.providers.base import ToolSpec
from bot.tools.base import ToolContext, integer_argument, string_argument
from bot.tools.paths import workspace_root

NOTE_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".rst", ".org", ".adoc"})
INDEX_VERSION = 1

SPEC = ToolSpec(
    name="knowledge_lookup",
    description=("Search the notes in your workspace (markdown and text files) by words. "
                 "Returns the best matching files with the passage that matched."),
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 500,
                      "description": "Words to look for"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 20,
                      "description": "How many files to return (default 5)"},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)


@dataclass(frozen=True)
class Hit:
    path: str
    snippet: str


def index_path(data_dir: Path, root: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:20]
    return data_dir / "knowledge" / f"{digest}.sqlite"


class KnowledgeLookup:
    spec = SPEC

    async def run(self, arguments: dict[str, object], context: ToolContext) -> str:
        query = string_argument(arguments, "query")
        limit = integer_argument(arguments, "limit", context.limits.lookup_hits)
        hits = await asyncio.to_thread(search_workspace, context.workspace, context.data_dir,
                                       query, limit=limit,
                                       max_file_bytes=context.limits.index_file_bytes,
                                       max_files=context.limits.index_max_files)
        if not hits:
            return f"No notes in the workspace match {query!r}."
        return "\n\n".join(f"{hit.path}:\n{hit.snippet}" for hit in hits)


def search_workspace(workspace: Path, data_dir: Path, query: str, *, limit: int = 5,
                     max_file_bytes: int = 1 << 20, max_files: int = 5000) -> list[Hit]:
    """Bring the workspace's index up to date, then search it."""
    terms = re.findall(r"\w+", query)
    if not terms:
        raise ToolFailed("knowledge_lookup: give at least one word to look for.")
    root = workspace_root(workspace)
    database = index_path(data_dir, root)
    database.parent.mkdir(parents=True, exist_ok=True)
    with _open_index(database) as db:
        update_index(db, root, max_file_bytes=max_file_bytes, max_files=max_files)
        quoted = ['"' + term.replace('"', '""') + '"' for term in terms]
        hits = _search(db, " ".join(quoted), limit)
        if not hits and len(quoted) > 1:
            hits = _search(db, " OR ".join(quoted), limit)
        return hits


class _Index:
    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, timeout=10, isolation_level=None)

    def __enter__(self) -> sqlite3.Connection:
        return self.connection

    def __exit__(self, *_exc: object) -> None:
        self.connection.close()


def _open_index(path: Path) -> _Index:
    index = _Index(path)
    db = index.connection
    try:
        db.execute("PRAGMA journal_mode=WAL")
        if db.execute("PRAGMA user_version").fetchone()[0] != INDEX_VERSION:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DROP TABLE IF EXISTS notes")
            db.execute("DROP TABLE IF EXISTS files")
            db.execute("CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, "
                       "mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL)")
            db.execute("CREATE VIRTUAL TABLE notes USING fts5(path UNINDEXED, body, "
                       "tokenize='porter unicode61')")
            db.execute(f"PRAGMA user_version={INDEX_VERSION}")
            db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        index.connection.close()
        if "fts5" in str(exc):
            raise ToolFailed("knowledge_lookup is unavailable: this Python's SQLite has no "
                             "full-text search (FTS5).") from None
        raise ToolFailed(f"knowledge_lookup: the search index cannot be opened ({exc}).") \
            from None
    return index


def _notes(root: Path, max_files: int) -> dict[str, os.stat_result]:
    """Relative path → stat of each note file in the workspace."""
    found: dict[str, os.stat_result] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in NOTE_SUFFIXES:
                continue
            path = Path(folder) / name
            try:
                real = path.resolve(strict=True)
                info = real.stat()
            except (OSError, RuntimeError):
                continue
            if not real.is_relative_to(root) or not stat.S_ISREG(info.st_mode):
                continue
            found[path.relative_to(root).as_posix()] = info
            if len(found) >= max_files:
                return found
    return found


def update_index(db: sqlite3.Connection, root: Path, *, max_file_bytes: int,
                 max_files: int) -> int:
    """Re-read changed notes and forget deleted ones; returns how many files were (re)read."""
    current = _notes(root, max_files)
    known = {path: (row_id, mtime, size) for row_id, path, mtime, size
             in db.execute("SELECT id, path, mtime_ns, size FROM files")}
    changed = [path for path, info in current.items()
               if known.get(path, (0, -1, -1))[1:] != (info.st_mtime_ns, info.st_size)]
    gone = [known[path][0] for path in known if path not in current]
    if not changed and not gone:
        return 0
    db.execute("BEGIN IMMEDIATE")
    try:
        for row_id in gone:
            db.execute("DELETE FROM notes WHERE rowid = ?", (row_id,))
            db.execute("DELETE FROM files WHERE id = ?", (row_id,))
        for path in changed:
            info = current[path]
            body = _read_note(root / path, max_file_bytes)
            if path in known:
                row_id = known[path][0]
                db.execute("UPDATE files SET mtime_ns = ?, size = ? WHERE id = ?",
                           (info.st_mtime_ns, info.st_size, row_id))
                db.execute("DELETE FROM notes WHERE rowid = ?", (row_id,))
            else:
                cursor = db.execute("INSERT INTO files (path, mtime_ns, size) VALUES (?, ?, ?)",
                                    (path, info.st_mtime_ns, info.st_size))
                row_id = cursor.lastrowid
            db.execute("INSERT INTO notes (rowid, path, body) VALUES (?, ?, ?)",
                       (row_id, path, body))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return len(changed)


def _read_note(path: Path, max_bytes: int) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes)
    except OSError:
        return ""
    if b"\x00" in data[:8192]:
        return ""
    return data.decode("utf-8", errors="replace")


def _search(db: sqlite3.Connection, match: str, limit: int) -> list[Hit]:
    rows = db.execute(
        "SELECT path, snippet(notes, 1, '[', ']', ' … ', 24) FROM notes "
        "WHERE notes MATCH ? ORDER BY rank LIMIT ?",
        (match, limit),
    ).fetchall()
    return [Hit(path=path, snippet=" ".join(snippet.split())) for path, snippet in rows]
