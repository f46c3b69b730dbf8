"""The archiver process: runs archive_command for each completed segment (.ready -> .done)."""
