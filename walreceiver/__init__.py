"""The walreceiver process: streams WAL from the primary into pg_wal (and restores it under walreceiver_restores)."""
