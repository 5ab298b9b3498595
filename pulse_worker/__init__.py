"""Pulse data plane: the generic Celery task that runs every job.

Never imports ``pulse_api``.
"""
