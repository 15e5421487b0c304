"""CA material in the database; typed deployment columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

* ``ca.chain_pem`` / ``ca.key_pem``: the issuing CA's chain and its key, still encrypted with the CA passphrase,
  so that the database is the source of truth for the CA every node issues with (live CA rotation).
* ``deployment.rollback_of``, ``deployment.verify_failures``, ``deployment.verify_failure``: whether a deployment
  is a rollback and how its verification failed, as columns. They were read from the transcript, which keeps only
  its newest 200 entries; existing rows are filled from their transcripts here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ca") as batch_op:
        batch_op.add_column(sa.Column("chain_pem", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("key_pem", sa.Text(), nullable=True))
    with op.batch_alter_table("deployment") as batch_op:
        batch_op.add_column(sa.Column("verify_failures", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("verify_failure", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("rollback_of", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_deployment_rollback_of_deployment"), "deployment", ["rollback_of"], ["id"]
        )
    with op.batch_alter_table("deployment") as batch_op:
        batch_op.alter_column("verify_failures", server_default=None)
    _backfill()


def _backfill() -> None:
    """Fill the new deployment columns from the transcripts of existing rows (bounded batches)."""
    bind = op.get_bind()
    deployment = sa.table(
        "deployment",
        sa.column("id", sa.Integer()),
        sa.column("transcript", sa.JSON()),
        sa.column("verify_failures", sa.Integer()),
        sa.column("verify_failure", sa.String()),
        sa.column("rollback_of", sa.Integer()),
    )
    after = 0
    while True:
        rows = bind.execute(
            sa.select(deployment.c.id, deployment.c.transcript)
            .where(deployment.c.id > after)
            .order_by(deployment.c.id)
            .limit(1000)
        ).all()
        if not rows:
            return
        for dep_id, transcript in rows:
            entries = transcript if isinstance(transcript, list) else []
            probes = [e for e in entries if isinstance(e, dict) and e.get("dir") == "probe"]
            failures = [e for e in probes if e.get("verdict") != "verified"]
            first = entries[0] if entries and isinstance(entries[0], dict) else {}
            rollback_of = first.get("failed_deployment") if first.get("dir") == "rollback" else None
            last = failures[-1].get("verdict") if failures else None
            values = {
                "verify_failures": len(failures),
                "verify_failure": last if last in ("drift", "undecided") else None,
                "rollback_of": rollback_of if isinstance(rollback_of, int) else None,
            }
            if values["verify_failures"] or values["rollback_of"] is not None:
                bind.execute(deployment.update().where(deployment.c.id == dep_id).values(**values))
        after = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("deployment") as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_deployment_rollback_of_deployment"), type_="foreignkey")
        batch_op.drop_column("rollback_of")
        batch_op.drop_column("verify_failure")
        batch_op.drop_column("verify_failures")
    with op.batch_alter_table("ca") as batch_op:
        batch_op.drop_column("key_pem")
        batch_op.drop_column("chain_pem")
