"""The approvals inbox: pages and a JSON API where people find, read and answer the runs
that wait for them, to mount in a FastAPI or Starlette app (``create_app``) or to run
with ``workflow-persistence serve``. Needs the ``inbox`` extra:
``pip install 'workflow-persistence[inbox]'``.
"""

from __future__ import annotations

from ._app import Access, Authorize, create_app

__all__ = ["Access", "Authorize", "create_app"]
