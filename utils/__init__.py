"""Shared by every process: logging (elog), settings (config), events, child-process plumbing (proc), injection points."""
