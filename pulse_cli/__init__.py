"""The `pulse` command and the process supervisor."""
