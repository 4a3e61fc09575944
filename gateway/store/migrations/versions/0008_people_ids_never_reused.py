"""Lead and contact ids are never reused on SQLite

A deleted lead or contact keeps its links as history (they name its id).  SQLite hands
out max(id) + 1 for a table without AUTOINCREMENT, so deleting the newest person made
the next one inherit the deleted one's id -- and its mail.  The two tables are rebuilt
with AUTOINCREMENT (ids only grow, as a PostgreSQL sequence does; copying the rows
sets the counter to the highest id).  PostgreSQL: nothing to do.

SQLite cannot turn foreign keys off inside the migration's transaction, and records
name contacts.  So the check waits for the commit (defer_foreign_keys), the old table
is dropped (its rows count as missing parents) and the new table under the same name
gets the rows back (each one settles its children) -- a rename would not settle them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    op.execute("PRAGMA defer_foreign_keys = ON")
    for name in ("leads", "contacts"):
        table = sa.Table(name, sa.MetaData(), autoload_with=bind, sqlite_autoincrement=True)
        hold = f"_{name}_0008"
        op.execute(f"CREATE TABLE {hold} AS SELECT * FROM {name}")
        op.execute(f"DROP TABLE {name}")
        table.create(bind)
        columns = ", ".join(c.name for c in table.columns)
        op.execute(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {hold} ORDER BY id")
        op.execute(f"DROP TABLE {hold}")


def downgrade() -> None:
    """Nothing: ids that only grow are right on every revision."""
