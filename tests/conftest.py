"""Shared test settings: no progress bars (trainers stay quiet and fast in every test)."""

import pytest


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("COACHLM_NO_PROGRESS", "1")
