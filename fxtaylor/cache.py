"""Where fxtaylor keeps what it computed once and reuses: ``$FXTAYLOR_CACHE``, else
``~/.cache/fxtaylor``.

What lives there:

- ``latency/<Deployment.key()>/``: the latency model's layer tables and per-model maps
  (:meth:`fxtaylor.latency.LatencyModel.build`, and so :class:`fxtaylor.cost.LatencyCost` and
  ``fxtaylor prune --target-latency``);
- ``digits32-<model>-e<epochs>-...pt``: the default job's model trained on the digits
  (:mod:`fxtaylor.job`), so later ``fxtaylor prune`` runs start pruning at once.

A leaf module: it imports nothing of fxtaylor's, so the measurement library and the command
line can both use it.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache's root folder (not created here): ``$FXTAYLOR_CACHE`` if set and not empty,
    else ``~/.cache/fxtaylor``."""
    return Path(os.environ.get("FXTAYLOR_CACHE") or Path.home() / ".cache" / "fxtaylor")
