"""The serving log: every routed request with its answer, variant, latency and tokens, and the feedback on it.

One SQLAlchemy store, so the same code writes sqlite (the default, under the home) and Postgres (the
production stack: ``FINETUNE_ASSETS_REQUEST_LOG=postgresql://...``). Two tables:

- ``responses``: id (the completion id clients get), created (unix s), day (UTC ``YYYY-MM-DD``), variant,
  routed (chosen by the A/B router, not named by the client), user_id, messages (JSON), answer, status,
  error, latency_s, prompt_tokens, completion_tokens, finish_reason;
- ``feedback``: id, response_id, created, day, label (True up / False down / None), preferred (a better
  answer the user gave), comment, user_id.

Each write is one transaction (sqlite in WAL mode with a busy timeout, so several server processes can append
to one file). ``rotate`` moves whole days older than a cut-off into Parquet files (``archive/<table>/day=D/``,
written then renamed) and only then deletes them from the database: a crash in between leaves a row in both
places, and readers keep one copy per id, so nothing is lost or counted twice. Readers (``responses_of``,
``feedback_of``) see the archive and the database together.
"""

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from finetune_assets import io

DEFAULT_FILE = "requests.sqlite"

_meta = sa.MetaData()
RESPONSES = sa.Table(
    "responses",
    _meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("day", sa.String(10), nullable=False, index=True),
    sa.Column("variant", sa.String(200), nullable=False),
    sa.Column("routed", sa.Boolean, nullable=False),
    sa.Column("user_id", sa.String(256)),
    sa.Column("messages", sa.Text, nullable=False),
    sa.Column("answer", sa.Text),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("latency_s", sa.Float, nullable=False),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("finish_reason", sa.String(32)),
)
FEEDBACK = sa.Table(
    "feedback",
    _meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("response_id", sa.String(64), nullable=False, index=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("day", sa.String(10), nullable=False, index=True),
    sa.Column("label", sa.Boolean),
    sa.Column("preferred", sa.Text),
    sa.Column("comment", sa.Text),
    sa.Column("user_id", sa.String(256)),
)
TABLES = {"responses": RESPONSES, "feedback": FEEDBACK}


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def default_url(home: Path) -> str:
    return f"sqlite:///{Path(home) / 'serving' / DEFAULT_FILE}"


class RequestLog:
    """Append-only log of served responses and their feedback at a SQLAlchemy ``url``."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            self.folder = Path(url.removeprefix("sqlite:///")).parent
            self.folder.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url, connect_args={"timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_wal)
        else:
            self.folder = None
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        _meta.create_all(self.engine)

    def archive_dir(self) -> Path | None:
        """Where rotated days go as Parquet (beside the sqlite file); None for a server database."""
        return self.folder / "archive" if self.folder else None

    def log_response(self, row: dict) -> str:
        """Append one response row (``created`` defaults to now); returns its id."""
        row = {"created": time.time(), "routed": False, **row}
        row["day"] = day_of(row["created"])
        row["messages"] = json.dumps(row["messages"], ensure_ascii=False)
        with self.engine.begin() as conn:
            conn.execute(RESPONSES.insert().values(**row))
        return row["id"]

    def response(self, response_id: str) -> dict | None:
        with self.engine.connect() as conn:
            found = conn.execute(RESPONSES.select().where(RESPONSES.c.id == response_id)).mappings().first()
        return _decoded(dict(found)) if found else None

    def log_feedback(
        self,
        response_id: str,
        label: bool | None,
        preferred: str | None = None,
        comment: str | None = None,
        user_id: str | None = None,
        created: float | None = None,
    ) -> str:
        created = time.time() if created is None else created
        row = {"id": f"fb-{uuid.uuid4().hex}", "response_id": response_id, "created": created,
               "day": day_of(created), "label": label, "preferred": preferred, "comment": comment,
               "user_id": user_id}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(FEEDBACK.insert().values(**row))
        return row["id"]

    def count_feedback(self, after: float = 0.0) -> int:
        """Feedback given after ``after`` (unix s), archive excluded: the retrain trigger's counter."""
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(FEEDBACK).where(FEEDBACK.c.created > after)
            return int(conn.execute(query).scalar_one())

    def rows(self, table: str, where=None) -> list[dict]:
        """Rows of ``table`` (archive and database, one per id) matching the SQL ``where`` on the database."""
        tbl = TABLES[table]
        with self.engine.connect() as conn:
            query = tbl.select() if where is None else tbl.select().where(where(tbl))
            return [dict(r) for r in conn.execute(query).mappings()]

    def responses_of(self, days: list[str] | None = None) -> list[dict]:
        """Responses logged on ``days`` (all when None), oldest first."""
        where = None if days is None else (lambda t: t.c.day.in_(days))
        rows = _one_per_id(self._archived("responses", days) + self.rows("responses", where))
        return [_decoded(r) for r in sorted(rows, key=lambda r: r["created"])]

    def feedback_of(self, days: list[str] | None = None) -> list[dict]:
        """Feedback given on ``days`` (all when None), oldest first."""
        where = None if days is None else (lambda t: t.c.day.in_(days))
        rows = _one_per_id(self._archived("feedback", days) + self.rows("feedback", where))
        return sorted(rows, key=lambda r: r["created"])

    def responses_by_id(self, ids: set[str]) -> dict[str, dict]:
        """The responses with these ids, wherever they were logged (feedback may come days later)."""
        if not ids:
            return {}
        live = self.rows("responses", lambda t: t.c.id.in_(sorted(ids)))
        archived = [r for r in self._archived("responses", None) if r["id"] in ids]
        return {r["id"]: _decoded(r) for r in _one_per_id(archived + live)}

    def rotate(self, keep_days: int, now: float | None = None) -> dict:
        """Move every day older than ``keep_days`` into the Parquet archive; returns rows moved per table."""
        archive = self.archive_dir()
        if archive is None:
            raise ValueError(
                f"{self.url}: rotation to Parquet is for the sqlite store (Postgres keeps its rows)"
            )
        cutoff = day_of((time.time() if now is None else now) - keep_days * 86400)
        moved = {}
        for name, tbl in TABLES.items():
            old = self.rows(name, lambda t, c=cutoff: t.c.day < c)
            for day in sorted({r["day"] for r in old}):
                part = archive / name / f"day={day}" / f"part-{uuid.uuid4().hex}.parquet"
                io.write_records_parquet([r for r in old if r["day"] == day], part)  # written, then renamed
            with self.engine.begin() as conn:
                conn.execute(tbl.delete().where(tbl.c.id.in_([r["id"] for r in old])))
            moved[name] = len(old)
        return moved

    def _archived(self, table: str, days: list[str] | None) -> list[dict]:
        archive = self.archive_dir()
        if archive is None or not (archive / table).is_dir():
            return []
        folders = [archive / table / f"day={d}" for d in days] if days is not None else None
        folders = folders if folders is not None else sorted((archive / table).glob("day=*"))
        return [row for folder in folders if folder.is_dir() for part in sorted(folder.glob("part-*.parquet"))
                for row in io.read_records(part)]  # fmt: skip


def _sqlite_wal(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _one_per_id(rows: list[dict]) -> list[dict]:
    return list({r["id"]: r for r in rows}.values())


def _decoded(row: dict) -> dict:
    if isinstance(row.get("messages"), str):
        row = {**row, "messages": json.loads(row["messages"])}
    return row
