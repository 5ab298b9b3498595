"""``make bench``: Pulse against plain Celery and plain Flask, same machine, same run."""
