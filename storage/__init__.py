"""Shared by the backend and the startup: the table store (SQLite) that the backend writes and replay applies."""
