"""The walsender process (one per replication connection): replication commands, streaming, BASE_BACKUP."""
