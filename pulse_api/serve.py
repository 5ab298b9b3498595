"""``python -m pulse_api.serve [gunicorn options] pulse_api.wsgi:app``: what ``pulse api`` runs.

gunicorn, with gevent's patching of the standard library done before anything
(gunicorn included) imports ``socket``, ``ssl`` or ``threading``: the API's gunicorn
workers are gevent workers (``pulse_api.gunicorn_conf``), and the app is preloaded.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from gunicorn.app.wsgiapp import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run())
