"""The command line (walswitch ...): the only package that may import every process (status, diagrams, demo)."""
