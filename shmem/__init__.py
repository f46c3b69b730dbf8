"""Shared by every process: the shared-memory layout, the state enums stored there, region mutexes and latches."""
