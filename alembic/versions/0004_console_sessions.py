"""web console: sessions, bulk jobs, and the indexes its pages need

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

* ``console_session``: one row per console login — the SHA-256 of the random session id (the id itself is only
  in the browser's cookie), the API token that logged in and its role, the client address, when it was created
  and last used, and its absolute expiry (idle expiry is ``last_seen_at`` + the idle timeout).
* ``console_job``: bulk actions (renew / retry / approve every phone a filter matches) run server-side, with
  their progress and the first errors.
* Indexes for the console's phone list at 100,000 phones (``bench/console.py``): prefix search on MAC, number,
  IP and host name (``text_pattern_ops`` on PostgreSQL so ``LIKE 'prefix%'`` uses them under any collation),
  sort by expiry and the expiry forecast (the join from a certificate to the phone whose current certificate it
  is, with its enrollment) and by last seen; proof of serving (the deployment that verified a phone's current
  certificate and how, from the index alone); the latest audit event of one action (last chain verification).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PATTERN = "text_pattern_ops"


def upgrade() -> None:
    op.create_table(
        "console_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"], ["api_token.id"], name=op.f("fk_console_session_token_id_api_token")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_session")),
        sa.UniqueConstraint("id_hash", name=op.f("uq_console_session_id_hash")),
    )
    op.create_index(op.f("ix_console_session_token_id"), "console_session", ["token_id"])
    op.create_index(op.f("ix_console_session_expires_at"), "console_session", ["expires_at"])

    op.create_table(
        "console_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("expected", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_job")),
    )

    op.create_index("ix_device_mac_prefix", "device", ["mac"], postgresql_ops={"mac": _PATTERN})
    for column in ("e164", "ip", "hostname"):
        op.create_index(op.f(f"ix_device_{column}"), "device", [column], postgresql_ops={column: _PATTERN})
    op.create_index(
        op.f("ix_device_current_certificate_id_enrollment"), "device", ["current_certificate_id", "enrollment"]
    )
    op.create_index(
        "ix_deployment_proof", "deployment", ["device_id", "certificate_id", "state", "check_probe", "verified_at"]
    )
    op.create_index(op.f("ix_device_last_seen_at"), "device", ["last_seen_at"])
    op.create_index(op.f("ix_audit_event_action_seq"), "audit_event", ["action", "seq"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_event_action_seq"), table_name="audit_event")
    op.drop_index(op.f("ix_device_last_seen_at"), table_name="device")
    op.drop_index("ix_deployment_proof", table_name="deployment")
    op.drop_index(op.f("ix_device_current_certificate_id_enrollment"), table_name="device")
    for column in ("hostname", "ip", "e164"):
        op.drop_index(op.f(f"ix_device_{column}"), table_name="device")
    op.drop_index("ix_device_mac_prefix", table_name="device")
    op.drop_table("console_job")
    op.drop_index(op.f("ix_console_session_expires_at"), table_name="console_session")
    op.drop_index(op.f("ix_console_session_token_id"), table_name="console_session")
    op.drop_table("console_session")
