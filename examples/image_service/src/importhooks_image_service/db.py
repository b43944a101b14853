"""Image records in SQLite (stdlib ``sqlite3``): one connection shared under a lock.

Request handlers (the event loop's thread) and the import runner's workers (their own
threads) both write records, so every status change is a *conditional* update
(:meth:`ImageDB.update` with ``expect``): it happens only if the image is still in one of
the statuses the caller checked, and tells the caller whether it did. A delete racing
an upload or an import therefore never gets overwritten by the slower party.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)
#: What a caller is told when the records cannot be read or written (e.g. their filesystem is full).
UNAVAILABLE = "The image service cannot save image records right now; try again later."
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    name TEXT,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    disk_format TEXT,
    container_format TEXT,
    size INTEGER,
    virtual_size INTEGER,
    checksum TEXT,
    os_hash_algo TEXT,
    os_hash_value TEXT,
    message TEXT,
    visibility TEXT NOT NULL,
    protected INTEGER NOT NULL DEFAULT 0,
    os_hidden INTEGER NOT NULL DEFAULT 0,
    min_disk INTEGER NOT NULL DEFAULT 0,
    min_ram INTEGER NOT NULL DEFAULT 0,
    tags TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}',
    import_job TEXT
);
CREATE INDEX IF NOT EXISTS images_owner ON images (owner, name);
CREATE INDEX IF NOT EXISTS images_status ON images (status);
CREATE TABLE IF NOT EXISTS image_members (
    image_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (image_id, member_id)
);
CREATE INDEX IF NOT EXISTS image_members_member ON image_members (member_id, status);
"""

#: The shared images a project is a member of (any membership, or one status).
_SHARED_ANY = "(visibility = 'shared' AND id IN (SELECT image_id FROM image_members WHERE member_id = ?))"
_SHARED_WITH_STATUS = ("(visibility = 'shared' AND id IN (SELECT image_id FROM image_members WHERE member_id = ? "
                       "AND status = ?))")
_JSON_COLUMNS = frozenset({"tags", "properties", "import_job"})
_BOOL_COLUMNS = frozenset({"protected", "os_hidden"})


def now() -> str:
    """The current time as Glance writes it: ISO 8601, UTC, seconds, ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image, as stored. ``properties`` are the custom (string) properties; ``import_job``
    is what the service needs to run the image's import again after a restart."""

    id: str
    owner: str
    status: str
    created_at: str
    updated_at: str
    name: str | None = None
    disk_format: str | None = None
    container_format: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    message: str | None = None
    visibility: str = "shared"
    protected: bool = False
    os_hidden: bool = False
    min_disk: int = 0
    min_ram: int = 0
    tags: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    import_job: Mapping[str, Any] | None = None


COLUMNS: tuple[str, ...] = tuple(ImageRecord.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class Member:
    """A project an image is shared with, and whether it accepted (``pending``, ``accepted``, ``rejected``)."""

    image_id: str
    member_id: str
    status: str
    created_at: str
    updated_at: str


def _to_sql(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        if value is None:
            return None
        return json.dumps(list(value) if column == "tags" else dict(value), sort_keys=True)
    if column in _BOOL_COLUMNS:
        return int(bool(value))
    return value


def _from_row(row: sqlite3.Row) -> ImageRecord:
    values: dict[str, Any] = {}
    for column in COLUMNS:
        value = row[column]
        if column == "tags":
            value = tuple(json.loads(value))
        elif column == "properties":
            value = MappingProxyType(json.loads(value))
        elif column == "import_job":
            value = MappingProxyType(json.loads(value)) if value is not None else None
        elif column in _BOOL_COLUMNS:
            value = bool(value)
        values[column] = value
    return ImageRecord(**values)


class ImageDB:
    """The image table. Thread-safe: one connection, one lock, autocommit.

    Every SQLite failure (``database or disk is full``, an I/O error) raises
    :class:`~importhooks_image_service.errors.DatabaseUnavailable` (503): the statement did not
    happen, the connection stays usable, and the next call succeeds once the cause is gone.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.IntegrityError:
                raise  # a constraint, not the database: the caller answers it
            except sqlite3.Error as exc:
                log.error("image records: %s", exc)
                if self._conn.in_transaction:
                    try:
                        self._conn.rollback()
                    except sqlite3.Error:
                        pass
                raise DatabaseUnavailable(UNAVAILABLE) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def insert(self, record: ImageRecord) -> None:
        marks = ", ".join("?" for _ in COLUMNS)
        with self._locked() as conn:
            conn.execute(f"INSERT INTO images ({', '.join(COLUMNS)}) VALUES ({marks})",  # noqa: S608
                               [_to_sql(column, getattr(record, column)) for column in COLUMNS])

    def get(self, image_id: str) -> ImageRecord | None:
        with self._locked() as conn:
            row = conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        return _from_row(row) if row is not None else None

    def listing(self, project: str, *, admin: bool = False, visibility: str | None = None,
                name: str | None = None, status: str | None = None, hidden: bool = False,
                member_status: str = "accepted") -> list[ImageRecord]:
        """The images ``project`` sees in a list, as Glance lists them, newest first; never deleted ones.

        Without ``visibility``: the project's own images and the public ones (an admin: every
        image); ``community`` images are listed only when asked for (``visibility=community`` or
        ``all``); ``private`` selects among the project's own; ``shared`` images are listed for their
        owner and for the members whose membership has ``member_status`` (``all``: any). ``hidden``:
        only the ``os_hidden`` images, else only the others.
        """
        query = "SELECT * FROM images WHERE status != 'deleted' AND os_hidden = ?"
        args: list[Any] = [int(hidden)]
        # Placeholders only: the text is one of two constants.
        shared = _SHARED_ANY if member_status == "all" else _SHARED_WITH_STATUS
        shared_args = [project] if member_status == "all" else [project, member_status]
        if visibility is None:
            if not admin:
                query += f" AND (owner = ? OR visibility = 'public' OR {shared})"
                args.extend([project, *shared_args])
        elif visibility == "all":
            if not admin:
                query += f" AND (owner = ? OR visibility IN ('public', 'community') OR {shared})"
                args.extend([project, *shared_args])
        elif visibility in ("public", "community"):
            query += " AND visibility = ?"
            args.append(visibility)
        elif visibility == "shared" and not admin:
            query += f" AND ((visibility = 'shared' AND owner = ?) OR {shared})"
            args.extend([project, *shared_args])
        else:
            query += " AND visibility = ?" + ("" if admin else " AND owner = ?")
            args.extend([visibility] if admin else [visibility, project])
        if name is not None:
            query += " AND name = ?"
            args.append(name)
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        with self._locked() as conn:
            rows = conn.execute(query + " ORDER BY created_at DESC, id", args).fetchall()
        return [_from_row(row) for row in rows]

    def with_status(self, *statuses: str) -> list[ImageRecord]:
        """Every image in one of ``statuses`` (start-up recovery)."""
        marks = ", ".join("?" for _ in statuses)
        with self._locked() as conn:
            rows = conn.execute(f"SELECT * FROM images WHERE status IN ({marks})",  # noqa: S608
                                      statuses).fetchall()
        return [_from_row(row) for row in rows]

    def update(self, image_id: str, *, expect: Collection[str] | None = None, **changes: Any) -> bool:
        """Set ``changes`` (and ``updated_at``) if the image exists and, with ``expect``, its status is in it.

        Returns whether the row was updated: ``False`` means another party changed the
        status first (or the image is gone), and the caller must not act as if it won.
        """
        unknown = set(changes) - set(COLUMNS) or {"id", "owner", "created_at"} & set(changes)
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        changes["updated_at"] = now()
        assignments = ", ".join(f"{column} = ?" for column in changes)
        args: list[Any] = [_to_sql(column, value) for column, value in changes.items()]
        query = f"UPDATE images SET {assignments} WHERE id = ?"  # noqa: S608 - column names are checked above
        args.append(image_id)
        if expect is not None:
            statuses = list(expect)
            query += f" AND status IN ({', '.join('?' for _ in statuses)})"
            args.extend(statuses)
        with self._locked() as conn:
            return conn.execute(query, args).rowcount == 1

    # -- image members ---------------------------------------------------------------------------

    def add_member(self, member: Member) -> bool:
        """Insert ``member``; ``False`` if the project is a member already."""
        try:
            with self._locked() as conn:
                conn.execute("INSERT INTO image_members (image_id, member_id, status, created_at, updated_at) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (member.image_id, member.member_id, member.status, member.created_at, member.updated_at))
        except sqlite3.IntegrityError:
            return False
        return True

    def members(self, image_id: str, member_id: str | None = None) -> list[Member]:
        """The members of ``image_id`` (only ``member_id``'s membership, if given), oldest first."""
        query = "SELECT * FROM image_members WHERE image_id = ?"
        args = [image_id]
        if member_id is not None:
            query += " AND member_id = ?"
            args.append(member_id)
        with self._locked() as conn:
            rows = conn.execute(query + " ORDER BY created_at, member_id", args).fetchall()
        return [Member(**{key: row[key] for key in Member.__dataclass_fields__}) for row in rows]

    def set_member_status(self, image_id: str, member_id: str, status: str) -> bool:
        with self._locked() as conn:
            return conn.execute("UPDATE image_members SET status = ?, updated_at = ? WHERE image_id = ? "
                                "AND member_id = ?", (status, now(), image_id, member_id)).rowcount == 1

    def delete_member(self, image_id: str, member_id: str) -> bool:
        with self._locked() as conn:
            return conn.execute("DELETE FROM image_members WHERE image_id = ? AND member_id = ?",
                                (image_id, member_id)).rowcount == 1
