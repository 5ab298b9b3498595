"""Pulse infrastructure: settings, Redis and Celery setup, job store, handler registry.

Never imports ``pulse_api`` or ``pulse_worker``.
"""
