"""pulse_api.gunicorn_conf: the master's hooks, run as gunicorn runs them."""

from __future__ import annotations

import subprocess
import sys

from gunicorn.config import KNOWN_SETTINGS

from tests.support import ROOT, child_env

#: gunicorn's master imports the config (which patches with gevent), preloads the app,
#: then calls ``pre_fork`` before each fork; the child reports what it inherited.
_MASTER = """
import gc, os, sys
from pulse_api import gunicorn_conf
import pulse_api, flask, celery, redis  # what the preloaded app holds
assert gc.get_freeze_count() == 0, "frozen before the hook ran"
gunicorn_conf.pre_fork(None, None)
pid = os.fork()
if pid == 0:
    os._exit(0 if gc.get_freeze_count() > 10_000 and gc.isenabled() else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_worker_forks_with_the_preloaded_objects_frozen_out_of_garbage_collection() -> None:
    # given gunicorn's hook names, and a master process that loaded the config and app
    assert "pre_fork" in {setting.name for setting in KNOWN_SETTINGS}
    # when the master runs pre_fork and forks a worker
    done = subprocess.run(
        [sys.executable, "-c", _MASTER], cwd=ROOT, env=child_env({}), capture_output=True, text=True, timeout=60
    )
    # then the worker starts with the loaded objects frozen (not walked by its
    # collections) and garbage collection still on for everything it allocates
    assert done.returncode == 0, done.stderr
