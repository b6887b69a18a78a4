"""``python -m tasks worker …``: a Launchbay worker, without the ``celery`` program's
plugins (see :func:`tasks.app.run_worker`; orchestrator/services.py starts it so)."""

from tasks.app import run_worker

run_worker()
