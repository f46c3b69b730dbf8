"""The startup process: crash recovery, and on a standby the WAL-source state machine, replay and promotion."""
