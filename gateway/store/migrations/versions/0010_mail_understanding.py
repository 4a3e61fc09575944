"""What the gateway understood of a message (issue 15)

- emails.new_text: the text its author wrote, quoted history and signature apart
  (filled from text_body for the mail stored before: nothing was split then);
- emails.forwarded_by, emails.forward_note: a forward filed as its original keeps the
  user who forwarded it and their note above the forward;
- emails.invitation: a meeting invitation's fields (a text/calendar part), as JSON.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        batch.add_column(sa.Column("new_text", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("forwarded_by", sa.String(320), nullable=True))
        batch.add_column(sa.Column("forward_note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("invitation", sa.JSON(), nullable=True))
    op.execute("UPDATE emails SET new_text = text_body")


def downgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        for name in ("invitation", "forward_note", "forwarded_by", "new_text"):
            batch.drop_column(name)
