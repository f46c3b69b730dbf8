"""The postmaster process: the supervisor. Runs in the postmaster; imports only the entry points it forks."""
