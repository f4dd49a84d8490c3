"""Sign-in throttle shared by all server processes, assignment expiry (per-project TTL and an
index to find stale pending assignments).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("sign_in_throttle",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
        sa.Column("blocked_until", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key")
    )
    op.create_index(op.f("ix_sign_in_throttle_last_at"), "sign_in_throttle", ["last_at"])
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("assignment_ttl_s", sa.Integer(), nullable=False,
                                   server_default=sa.text("3600")))
    op.create_index("ix_assignments_status_created", "assignments", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_assignments_status_created", table_name="assignments")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("assignment_ttl_s")
    op.drop_index(op.f("ix_sign_in_throttle_last_at"), table_name="sign_in_throttle")
    op.drop_table("sign_in_throttle")
