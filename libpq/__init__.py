"""Shared by server and client sides: PostgreSQL frontend/backend protocol v3 messages (the wire codec)."""
