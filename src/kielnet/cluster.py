"""Connecting to a Dask cluster: ``--cluster local:N | tcp://HOST:PORT``.

Shared by distributed training (:mod:`kielnet.training.distributed`) and prediction
(:mod:`kielnet.inference.distributed`). Needs the ``distributed`` package
(``pip install "kielnet[cluster]"``). On a batch system, start a scheduler and
workers with dask-jobqueue (see the README) and pass its address, or pass a
:class:`distributed.Client` from Python.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Any, Iterator

from kielnet.errors import UsageError

__all__ = ["check_cluster", "cluster_client"]

_LOCAL = re.compile(r"local:(\d+)")
_REMOTE = re.compile(r"(tcp|tls)://[^\s/:]+:\d+/?")


def _is_client(cluster: Any) -> bool:
    try:
        from distributed import Client
    except ImportError:
        return False
    return isinstance(cluster, Client)


def check_cluster(cluster: Any) -> None:
    """Refuse a malformed ``cluster`` (before any compute)."""
    if _is_client(cluster):
        return
    if not isinstance(cluster, str):
        raise UsageError(f"cluster must be 'local:N', 'tcp://HOST:PORT' or a distributed.Client, got "
                         f"{type(cluster).__name__}")
    m = _LOCAL.fullmatch(cluster)
    if m is None and _REMOTE.fullmatch(cluster) is None:
        raise UsageError(f"--cluster {cluster!r}: expected 'local:N' (N worker processes) or 'tcp://HOST:PORT'")
    if m is not None and int(m.group(1)) < 1:
        raise UsageError(f"--cluster {cluster!r}: the number of workers must be >= 1")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError("--cluster needs the 'distributed' package: pip install \"dask[distributed]\"") from None


@contextmanager
def cluster_client(cluster: Any) -> Iterator[Any]:
    """A :class:`distributed.Client` for ``cluster``; what is started here is closed at the end.

    ``local:N`` starts N single-threaded worker processes (one torch thread each).
    """
    check_cluster(cluster)
    from distributed import Client, LocalCluster

    if _is_client(cluster):
        yield cluster
        return
    m = _LOCAL.fullmatch(cluster)
    if m is not None:
        lc = LocalCluster(n_workers=int(m.group(1)), threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR,
                          env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
        try:
            client = Client(lc)
            try:
                yield client
            finally:
                client.close()
        finally:
            lc.close()
        return
    try:
        client = Client(cluster, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"--cluster {cluster}: cannot reach the Dask scheduler ({exc})") from None
    try:
        yield client
    finally:
        client.close()
