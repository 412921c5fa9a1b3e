"""Reranker releases shared through PostgreSQL, so a promotion on one machine reaches every server on every machine.

Choice: model files are stored in the database (``bytea``, in parts), not on a shared path. A team already runs
the database, every server already reaches it, and a release is small (a 6-layer MiniLM cross-encoder is ~90 MB;
a 2-layer one ~35 MB); a shared file system would be one more thing to mount, permission and keep consistent, and
its rename/symlink semantics differ across NFS/SMB. The database row ``agro_release_current`` is the truth:

* ``publish`` uploads a release's files and points ``current`` at it, in one transaction (all or nothing);
* ``set_current`` re-points it (rollback);
* ``sync`` (run by each server's reranker manager before every reload check) downloads the current release into
  the local ``AGRO_HOME/models/releases/<id>`` if it is missing (into a temp folder, manifest written last,
  renamed into place), then flips the local ``current`` symlink. The existing hot-reload picks it up.

A crash at any point leaves the database on the old or the new release and every local ``current`` on a complete
release; the next ``sync`` converges.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from retrieval.atomic import fsync_dir
from retrieval.pgdb import Database

__all__ = ["RELEASE_MIGRATIONS", "PgReleaseRegistry", "open_release_registry"]

logger = logging.getLogger(__name__)

_PART = 32 << 20  # bytes per bytea part

RELEASE_MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE agro_releases (
            release_id text PRIMARY KEY,
            manifest jsonb NOT NULL,
            parent text,
            total_bytes bigint NOT NULL,
            created timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE agro_release_files (
            release_id text NOT NULL REFERENCES agro_releases(release_id) ON DELETE CASCADE,
            path text NOT NULL,
            part integer NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (release_id, path, part))""",
        """CREATE TABLE agro_release_current (
            id integer PRIMARY KEY CHECK (id = 1),
            release_id text NOT NULL REFERENCES agro_releases(release_id),
            updated timestamptz NOT NULL DEFAULT now(),
            changed_by text)""",
    ),
]


class PgReleaseRegistry:
    name = "postgres"

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("releases", RELEASE_MIGRATIONS)

    def publish(self, release_dir: Path, release_id: str, changed_by: str = "") -> None:
        """Upload ``release_dir`` (which has its manifest) and make it current, in one transaction."""
        release_dir = Path(release_dir)
        manifest = json.loads((release_dir / "manifest.json").read_text(encoding="utf-8"))
        files = sorted(p for p in release_dir.rglob("*") if p.is_file())

        def tx(conn) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('agro-release'))")  # one switch at a time, anywhere
            exists = conn.execute("SELECT 1 FROM agro_releases WHERE release_id = %s", (release_id,)).fetchone()
            if not exists:
                total = sum(p.stat().st_size for p in files)
                conn.execute(
                    "INSERT INTO agro_releases (release_id, manifest, parent, total_bytes) VALUES (%s, %s, %s, %s)",
                    (release_id, json.dumps(manifest), manifest.get("parent"), total),
                )
                for p in files:
                    rel = p.relative_to(release_dir).as_posix()
                    with open(p, "rb") as fh:
                        part = 0
                        while True:
                            data = fh.read(_PART)
                            if not data and part:
                                break
                            conn.execute(
                                "INSERT INTO agro_release_files (release_id, path, part, data) VALUES (%s, %s, %s, %s)",
                                (release_id, rel, part, data),
                            )
                            part += 1
                            if len(data) < _PART:
                                break
            self._set_current(conn, release_id, changed_by)

        self.db.write(tx, "release publish")
        logger.info("release %s published to the shared database", release_id)

    @staticmethod
    def _set_current(conn, release_id: str, changed_by: str) -> None:
        conn.execute(
            "INSERT INTO agro_release_current (id, release_id, changed_by) VALUES (1, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET release_id = EXCLUDED.release_id, updated = now(), "
            "changed_by = EXCLUDED.changed_by",
            (release_id, changed_by),
        )

    def set_current(self, release_id: str, changed_by: str = "") -> None:
        def tx(conn) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('agro-release'))")
            if not conn.execute("SELECT 1 FROM agro_releases WHERE release_id = %s", (release_id,)).fetchone():
                raise LookupError(f"release {release_id} is not in the shared database; promote it first")
            self._set_current(conn, release_id, changed_by)

        self.db.write(tx, "release set_current")

    def current_id(self) -> str | None:
        def q(conn):
            row = conn.execute("SELECT release_id FROM agro_release_current WHERE id = 1").fetchone()
            return row[0] if row else None

        return self.db.read(q, "current release")

    def list(self) -> list[dict[str, Any]]:
        def q(conn):
            return conn.execute(
                "SELECT release_id, parent, total_bytes, created FROM agro_releases ORDER BY created"
            ).fetchall()

        return [{"id": r[0], "parent": r[1], "bytes": int(r[2]), "created": r[3].isoformat()}
                for r in self.db.read(q, "list releases")]

    def download(self, release_id: str, models_dir: Path) -> Path:
        """Materialise a release under ``models_dir/releases/<id>`` (complete or not at all)."""
        releases = Path(models_dir) / "releases"
        dest = releases / release_id
        if (dest / "manifest.json").is_file():
            return dest
        releases.mkdir(parents=True, exist_ok=True)
        tmp = releases / f".dl-{release_id}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            def fetch(conn):
                return conn.execute(
                    "SELECT path, part, data FROM agro_release_files WHERE release_id = %s ORDER BY path, part",
                    (release_id,),
                ).fetchall()

            rows = self.db.read(fetch, "release download")
            if not rows:
                raise LookupError(f"release {release_id} has no files in the shared database")
            manifest_bytes = b""
            for path, _part, data in rows:
                if path == "manifest.json":
                    manifest_bytes += bytes(data)
                    continue
                target = tmp / path
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "ab") as fh:
                    fh.write(bytes(data))
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            with open(tmp / "manifest.json", "wb") as fh:  # last: a folder without it is never loaded
                fh.write(manifest_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(tmp)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not (dest / "manifest.json").is_file():  # another process on this host won the race
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            fsync_dir(releases)
            logger.info("release %s downloaded from the shared database", release_id)
            return dest
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def sync(self, models_dir: Path) -> str | None:
        """Make the local ``models/current`` the database's current release. Returns its id (or None)."""
        from training.releases.promote import flip_current

        release_id = self.current_id()
        if release_id is None:
            return None
        models_dir = Path(models_dir)
        cur = models_dir / "current"
        if cur.exists() and cur.resolve().name == release_id:
            return release_id
        self.download(release_id, models_dir)
        flip_current(models_dir, release_id)
        logger.info("local models/current now at shared release %s", release_id)
        return release_id


def open_release_registry(backend: str, database_url: str | None, pool_size: int = 8) -> PgReleaseRegistry | None:
    """The shared release registry for ``AGRO_BACKEND=postgres``; None for the embedded backend (local files only)."""
    if backend != "postgres":
        return None
    from retrieval.pgdb import open_database

    return PgReleaseRegistry(open_database(database_url, pool_size))
