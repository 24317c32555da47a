"""The database: an async SQLAlchemy engine on SQLite (default) or PostgreSQL, migrated
with Alembic."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, Float, event, literal_column, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

DEFAULT_URL = "sqlite+aiosqlite:///parley.db"
MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x7061726C6579  # "parley": the pg_advisory_xact_lock key of migrate()
_READ_ONLY = "parley_read_only"
"""Execution option: a SQLite transaction that only reads (BEGIN DEFERRED)."""


def database_url(url: str | None = None) -> str:
    """The async driver URL for ``url`` (default: ``DATABASE_URL``, else ./parley.db).

    ``postgres://`` and ``postgresql://`` (as hosting providers write them) mean asyncpg;
    ``sqlite:///path`` means aiosqlite.
    """
    url = url or os.environ.get("DATABASE_URL") or DEFAULT_URL
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


class Database:
    def __init__(self, url: str | None = None, **engine_kwargs: Any) -> None:
        self.url = database_url(url)
        if not self.url.startswith("sqlite"):
            # A connection the pool kept across a PostgreSQL restart is dead: test it on
            # checkout (one round trip) rather than fail the caller's query.
            engine_kwargs.setdefault("pool_pre_ping", True)
        self.engine: AsyncEngine = create_async_engine(self.url, **engine_kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def session(self, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        """A unit of work: committed on success, rolled back on error.

        On SQLite a unit of work takes the write lock when it begins (BEGIN IMMEDIATE),
        so a read-check-write cannot interleave with another writer's; ``read_only``
        ones begin deferred and never wait for writers (WAL)."""
        async with self._sessions() as session, session.begin():
            if read_only and self.is_sqlite:
                # Procures the connection, and begins it, with the option the begin
                # listener reads.
                await session.connection(execution_options={_READ_ONLY: True})
            yield session

    def clock(self) -> ColumnElement[float]:
        """The database's time now, in epoch seconds, as an SQL expression: leases are
        set and compared on one clock whatever the app servers' clocks say."""
        if self.is_sqlite:
            # julianday() is a double: ~10 µs resolution at today's dates.
            return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)
        # clock_timestamp(), not now(): a statement that waited on a lock sees the time
        # it runs, not the time its transaction began.
        return literal_column(
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)", Float
        )

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision.

        Safe when several processes start at once: on PostgreSQL a transaction-scoped
        advisory lock makes the others wait and then find the schema current; on SQLite
        the migration's transaction holds the write lock from its first statement."""
        async with self.engine.begin() as connection:
            if self.is_postgresql:
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            await connection.run_sync(_upgrade)

    async def ping(self) -> None:
        """One round trip to the database (``SELECT 1``); raises when it cannot be
        reached. A pooled connection the database dropped (it restarted) fails the first
        attempt and is discarded by the pool: the second attempt then tells."""
        for attempt in (1, 2):
            try:
                async with self.session(read_only=True) as session:
                    await session.execute(text("SELECT 1"))
                return
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise

    async def close(self) -> None:
        await self.engine.dispose()


def _upgrade(connection: Any) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver would BEGIN (deferred) only at the first write, so a unit of work that
    # reads, checks and writes could interleave with another's; with its own transaction
    # handling off, _sqlite_begin emits BEGIN itself (SQLAlchemy's documented recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # Foreign keys (for ON DELETE CASCADE) are off in SQLite unless asked for per connection;
    # WAL lets readers work while a turn is being written; with WAL, synchronous=NORMAL
    # keeps every commit across a process crash (only a power cut can lose the last ones)
    # and spares an fsync per write in the middle of a conversation.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # A writer waits up to 30 s for the write lock: on an event loop that is busy (a
    # worker past its capacity, in make bench-load) a unit of work holding the lock across
    # its awaits can keep it for seconds, and after 5 s the others' turns, segments and
    # new sessions failed to be stored ("database is locked").
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock now (waiting up to busy_timeout for it): two units
    # of work never both read a state and then both write. A deferred transaction that
    # read first would instead fail with SQLITE_BUSY when it tried to write.
    read_only = connection.get_execution_options().get(_READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
