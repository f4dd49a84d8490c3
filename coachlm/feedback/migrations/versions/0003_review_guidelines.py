"""Labeling experience (issue 14): label revisions kept for audit, reviews (accept, reject,
correct, adjudicate), which guidelines version each labeler last read, a skip reason on
assignments and per-project guidance (rating anchors, flag descriptions, quota, skip reasons).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("guidance", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("assignments", sa.Column("skip_reason", sa.String(length=200), nullable=True))
    op.create_table("label_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label_id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.Column("time_spent_s", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("superseded_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["label_id"], ["labels.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_label_revisions_label_id"), "label_revisions", ["label_id"])
    op.create_table("reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("answer", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["label_id"], ["labels.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reviewer_id"], ["labelers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_reviews_label_id"), "reviews", ["label_id"])
    op.create_table("guideline_reads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("read_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["labeler_id"], ["labelers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("labeler_id", "project_id"),
    )


def downgrade() -> None:
    op.drop_table("guideline_reads")
    op.drop_index(op.f("ix_reviews_label_id"), table_name="reviews")
    op.drop_table("reviews")
    op.drop_index(op.f("ix_label_revisions_label_id"), table_name="label_revisions")
    op.drop_table("label_revisions")
    with op.batch_alter_table("assignments") as batch:  # SQLite rebuilds the table
        batch.drop_column("skip_reason")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("guidance")
