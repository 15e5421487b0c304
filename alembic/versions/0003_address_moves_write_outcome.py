"""address moves held for approval; unknown write outcome

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

* ``device.pending_ip`` / ``pending_contact_me_uri`` / ``pending_since``: a phone that reported from a new
  address without proving it holds its key (the TLS probe of the new address did not serve its certificate) is
  held there until an operator approves the move; its known address stays meanwhile.
* ``deployment.write_sent_at``: when the WriteItems with the certificate left; a deployment with it set and
  ``written_at`` unset has an unknown write outcome, which the next contact resolves before writing again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device") as batch_op:
        batch_op.add_column(sa.Column("pending_ip", sa.String(length=45), nullable=True))
        batch_op.add_column(sa.Column("pending_contact_me_uri", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("deployment") as batch_op:
        batch_op.add_column(sa.Column("write_sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployment") as batch_op:
        batch_op.drop_column("write_sent_at")
    with op.batch_alter_table("device") as batch_op:
        batch_op.drop_column("pending_since")
        batch_op.drop_column("pending_contact_me_uri")
        batch_op.drop_column("pending_ip")
