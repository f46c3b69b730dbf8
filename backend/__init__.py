"""The backend process: client connections, authentication, sessions, SQL; on a primary the WAL inserter and checkpoints."""
