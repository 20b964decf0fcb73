"""Where results live: an SQLAlchemy URL, SQLite in the user data directory by default.

The schema is versioned by a one-row table, ``cifarbench_schema``; ``MIGRATIONS[i]`` takes a
database from version i to i+1 and runs, with the version bump, in one transaction (DDL is
transactional in SQLite and PostgreSQL), so an interrupted migration leaves the old version intact.
SQLite transactions start with BEGIN IMMEDIATE: a writer takes the write lock before it reads,
so two writers queue on the busy timeout instead of failing on a read-to-write upgrade.
SQLAlchemy is imported here, never by ``import cifarbench``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy import event

from cifarbench.errors import CifarbenchError, UsageError

ENV_VAR = "CIFARBENCH_RESULTS_DB"
BUSY_TIMEOUT_S = 60.0


def default_url() -> str:
    from platformdirs import user_data_dir

    return "sqlite:///" + str(Path(user_data_dir("cifarbench", appauthor=False)) / "results.db")


def resolve_url(url: str | None = None) -> str:
    """--results-db > $CIFARBENCH_RESULTS_DB > SQLite in the user data directory; a bare path means SQLite."""
    url = url or os.environ.get(ENV_VAR) or default_url()
    if "://" not in url:
        url = "sqlite:///" + str(Path(url).expanduser().resolve())
    return url


def shown_url(url: str) -> str:
    """The URL with any password masked, for messages and the report."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _sqlite_setup(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # pysqlite's own BEGIN handling off: we emit ours below

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def connect(url: str | None = None, migrate: bool = True) -> sa.Engine:
    """An engine on the results database, created and migrated to the current schema."""
    url = resolve_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except Exception:
        raise UsageError(f"not a database URL: {shown_url(url)}", hint="e.g. sqlite:///results.db or postgresql+psycopg://user@host/db") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            memory = parsed.database in (None, "", ":memory:")
            if not memory:
                try:
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise CifarbenchError(f"cannot create the results database's folder: {exc}") from None
            # one process-wide connection for an in-memory database (each new one would be empty)
            pool = sa.pool.StaticPool if memory else sa.pool.NullPool
            engine = sa.create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S}, poolclass=pool)
            _sqlite_setup(engine)
        else:
            engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise UsageError(f"no driver for {parsed.drivername}: {exc}", hint="for PostgreSQL: pip install 'cifarbench[postgres]'") from None
    if migrate:
        try:
            upgrade(engine)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise CifarbenchError(f"cannot open the results database {shown_url(url)}: {first}",
                                  hint="check --results-db / $CIFARBENCH_RESULTS_DB") from None
    return engine


# ----- schema versions --------------------------------------------------------------------
def _v0_to_v1(conn: sa.Connection) -> None:
    """The first layout: machines (one fingerprint each) and results (one bench row or train run each)."""
    md = sa.MetaData()
    sa.Table("cifarbench_schema", md, sa.Column("version", sa.Integer, nullable=False))
    sa.Table(
        "machines", md,
        sa.Column("fingerprint_id", sa.String(32), primary_key=True),
        sa.Column("first_seen", sa.String(32), nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
    )
    sa.Table(
        "results", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("model", sa.String(100)), sa.Column("backend", sa.String(50)), sa.Column("device", sa.String(50)),
        sa.Column("device_name", sa.String(200)), sa.Column("precision", sa.String(10)),
        sa.Column("batch_size", sa.Integer), sa.Column("dataset", sa.String(300)), sa.Column("epochs", sa.Integer),
        sa.Column("seeds", sa.Integer),
        sa.Column("images_per_s", sa.Float), sa.Column("images_per_s_min", sa.Float),
        sa.Column("images_per_s_max", sa.Float),
        sa.Column("accuracy", sa.Float), sa.Column("accuracy_std", sa.Float), sa.Column("total_time_s", sa.Float),
        sa.Column("time_to_target_s", sa.Float), sa.Column("target_acc", sa.Float),
        sa.Column("fingerprint_id", sa.String(32), sa.ForeignKey("machines.fingerprint_id"), nullable=False),
        sa.Column("hostname", sa.String(255)),
        sa.Column("code_version", sa.String(40)), sa.Column("git_commit", sa.String(40)),
        sa.Column("git_dirty", sa.Boolean),
        sa.Column("config", sa.Text), sa.Column("data", sa.Text, nullable=False),
    )
    md.create_all(conn)
    conn.execute(sa.text("INSERT INTO cifarbench_schema (version) VALUES (0)"))


def _v1_to_v2(conn: sa.Connection) -> None:
    """Where a row came from (train, bench, import of a file) and when it was recorded; an index
    for the usual filters. Rows recorded before v2 get source 'unknown'."""
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN source VARCHAR(500)"))
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN recorded VARCHAR(32)"))
    conn.execute(sa.text("UPDATE results SET source = 'unknown', recorded = created"))
    conn.execute(sa.text("CREATE INDEX ix_results_case ON results (model, backend, device, precision)"))


MIGRATIONS: list[Callable[[sa.Connection], None]] = [_v0_to_v1, _v1_to_v2]
SCHEMA_VERSION = len(MIGRATIONS)


def version(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table("cifarbench_schema"):
        return 0
    return int(conn.execute(sa.text("SELECT version FROM cifarbench_schema")).scalar_one())


def _set_version(conn: sa.Connection, v: int) -> None:
    conn.execute(sa.text("UPDATE cifarbench_schema SET version = :v"), {"v": v})


def upgrade(engine: sa.Engine, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations, each with its version bump in one transaction; returns the version."""
    while True:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # concurrent first uses queue here, not on CREATE TABLE
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(1919191919)"))
            v = version(conn)
            if v > SCHEMA_VERSION:
                raise UsageError(f"the results database has schema version {v}; this cifarbench knows up to {SCHEMA_VERSION}",
                                 hint="upgrade cifarbench")
            if v >= target:
                return v
            MIGRATIONS[v](conn)
            _set_version(conn, v + 1)
