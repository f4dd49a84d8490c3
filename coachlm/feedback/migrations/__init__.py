"""Alembic migrations of the feedback store (run by `coachlm.feedback.db.upgrade`)."""
