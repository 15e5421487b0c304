"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Generated with autogenerate against an empty database, then reviewed by hand:

* every type is a plain ``sa.*`` type (UTCDateTime -> DateTime(timezone=True), StrEnumType -> String(n)), so
  this file never changes when certmgr's Python types do;
* constraint and index names follow certmgr.db.models.NAMING_CONVENTION;
* the device <-> certificate cycle: ``device`` is created without its foreign key to ``certificate``, which is
  added afterwards (batch mode, so SQLite rebuilds the table) and dropped first on downgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT on PostgreSQL; INTEGER on SQLite, where only INTEGER PRIMARY KEY is the autoincrement rowid.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_token")),
        sa.UniqueConstraint("name", name=op.f("uq_api_token_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_token_token_hash")),
    )

    op.create_table(
        "audit_event",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("seq", BIG_ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject_type", sa.String(length=32), nullable=True),
        sa.Column("subject_id", sa.String(length=128), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_event")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_event_hash")),
        sa.UniqueConstraint("seq", name=op.f("uq_audit_event_seq")),
    )
    op.create_index(op.f("ix_audit_event_at"), "audit_event", ["at"])
    op.create_index(
        op.f("ix_audit_event_subject_type_subject_id"), "audit_event", ["subject_type", "subject_id"]
    )

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", BIG_ID, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )

    op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", BIG_ID, nullable=False),
        sa.Column("event_hash", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["audit_event.id"], name=op.f("fk_audit_checkpoint_event_id_audit_event")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoint")),
    )
    op.create_index(op.f("ix_audit_checkpoint_event_id"), "audit_checkpoint", ["event_id"])

    op.create_table(
        "ca",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("imported", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ca")),
        sa.UniqueConstraint("fingerprint_sha256", name=op.f("uq_ca_fingerprint_sha256")),
    )

    op.create_table(
        "pkcs12_profile_memory",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_type", sa.String(length=64), nullable=False),
        sa.Column("software_version", sa.String(length=64), nullable=False),
        sa.Column("profile", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pkcs12_profile_memory")),
        sa.UniqueConstraint(
            "device_type",
            "software_version",
            name=op.f("uq_pkcs12_profile_memory_device_type_software_version"),
        ),
    )

    # device.current_certificate_id -> certificate.id is added below, once certificate exists.
    op.create_table(
        "device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("e164", sa.String(length=32), nullable=True),
        sa.Column("device_type", sa.String(length=64), nullable=True),
        sa.Column("software_version", sa.String(length=64), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("contact_me_uri", sa.String(length=512), nullable=True),
        sa.Column("hostname", sa.String(length=255), nullable=True),
        sa.Column("dns_names", sa.JSON(), nullable=False),
        sa.Column("policy_name", sa.String(length=128), nullable=True),
        sa.Column("enrollment", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("drift", sa.Boolean(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_contact_me_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("current_certificate_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device")),
        sa.UniqueConstraint("mac", name=op.f("uq_device_mac")),
    )
    op.create_index(op.f("ix_device_policy_name"), "device", ["policy_name"])
    op.create_index(op.f("ix_device_status"), "device", ["status"])

    op.create_table(
        "certificate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("sans", sa.JSON(), nullable=False),
        sa.Column("key_type", sa.String(length=16), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("key_blob", sa.LargeBinary(), nullable=False),
        sa.Column("issuer_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("policy_name", sa.String(length=128), nullable=True),
        sa.Column("policy_digest", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revocation_reason", sa.String(length=64), nullable=True),
        sa.Column("previous_certificate_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"], name=op.f("fk_certificate_device_id_device")),
        sa.ForeignKeyConstraint(
            ["previous_certificate_id"],
            ["certificate.id"],
            name=op.f("fk_certificate_previous_certificate_id_certificate"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificate")),
        sa.UniqueConstraint("fingerprint_sha256", name=op.f("uq_certificate_fingerprint_sha256")),
        sa.UniqueConstraint("serial", name=op.f("uq_certificate_serial")),
    )
    op.create_index(op.f("ix_certificate_device_id_status"), "certificate", ["device_id", "status"])
    op.create_index(op.f("ix_certificate_not_after"), "certificate", ["not_after"])

    with op.batch_alter_table("device") as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_device_current_certificate_id_certificate"),
            "certificate",
            ["current_certificate_id"],
            ["id"],
        )

    op.create_table(
        "deployment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("certificate_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("profile_index", sa.Integer(), nullable=False),
        sa.Column("profile_used", sa.String(length=16), nullable=True),
        sa.Column("password_item_used", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("contacted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("check_reply", sa.String(length=16), nullable=True),
        sa.Column("check_info", sa.String(length=16), nullable=True),
        sa.Column("check_probe", sa.String(length=16), nullable=True),
        sa.Column("info_raw", sa.Text(), nullable=True),
        sa.Column("transcript", sa.JSON(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_id"], ["certificate.id"], name=op.f("fk_deployment_certificate_id_certificate")
        ),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"], name=op.f("fk_deployment_device_id_device")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment")),
    )
    op.create_index(op.f("ix_deployment_device_id"), "deployment", ["device_id"])
    op.create_index(op.f("ix_deployment_state_next_attempt_at"), "deployment", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_deployment_state_next_attempt_at"), table_name="deployment")
    op.drop_index(op.f("ix_deployment_device_id"), table_name="deployment")
    op.drop_table("deployment")

    with op.batch_alter_table("device") as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_device_current_certificate_id_certificate"), type_="foreignkey"
        )

    op.drop_index(op.f("ix_certificate_not_after"), table_name="certificate")
    op.drop_index(op.f("ix_certificate_device_id_status"), table_name="certificate")
    op.drop_table("certificate")

    op.drop_index(op.f("ix_device_status"), table_name="device")
    op.drop_index(op.f("ix_device_policy_name"), table_name="device")
    op.drop_table("device")

    op.drop_table("pkcs12_profile_memory")
    op.drop_table("ca")

    op.drop_index(op.f("ix_audit_checkpoint_event_id"), table_name="audit_checkpoint")
    op.drop_table("audit_checkpoint")

    op.drop_table("audit_head")

    op.drop_index(op.f("ix_audit_event_subject_type_subject_id"), table_name="audit_event")
    op.drop_index(op.f("ix_audit_event_at"), table_name="audit_event")
    op.drop_table("audit_event")

    op.drop_table("api_token")
