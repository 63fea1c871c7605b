"""Chalice's entry point; the app lives in the `api` package."""

from api.app import app  # noqa: F401
