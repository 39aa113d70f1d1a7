"""Chunked prediction on Dask distributed: one task per chunk.

:func:`kielnet.inference.streaming.predict_to_file` with ``cluster=`` hands its chunk
loop to :func:`predict_chunks`. Each task

* loads the bundle once per worker (a worker-side cache keyed by bundle path and
  fingerprint; workers are sent the bundle's *path* when it was loaded from disk, the
  bundle itself — scattered once — otherwise) and builds its member networks once;
* reads its own chunk ``k`` from the (picklable) source,
  ``source.batches(chunk_size, start=k * chunk_size)`` (a source made of files whose
  row counts are unknown, e.g. Gaia XP bulk files, counts the rows of every file first,
  one task per file, ``source.plan_rows``, so that a task skips to its file at once);
* labels it with one torch thread (and ``KIELNET_THREADS=1`` unless the worker's
  environment says otherwise: :mod:`kielnet.threads`) exactly as a single process does
  (:func:`kielnet.inference.streaming.run_chunk`: same part file, same content, same
  per-part input fingerprint, random generator ``default_rng([seed, k])``), or checks
  and reuses the part an earlier run wrote;
* returns a small summary (rows, ids digest, rows per status name).

The driver keeps a few tasks per worker in flight, advances the progress bar as tasks
finish, gathers the summaries in chunk order and writes the final output as a
single-process run does. A cluster run therefore resumes on one machine and vice
versa. Workers must see the output's directory (parts are written there), the bundle
directory and the source's files at the same paths.

``cluster`` is ``"local:N"`` (a :class:`distributed.LocalCluster` of ``N``
single-threaded worker processes, started here and closed at the end),
``"tcp://HOST:PORT"`` (a running scheduler) or a :class:`distributed.Client`
(:mod:`kielnet.cluster`). Needs the ``distributed`` package
(``pip install "kielnet[cluster]"``).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from kielnet.cluster import check_cluster, cluster_client
from kielnet.runtime import keep_large_allocations
from kielnet.data.source import StarSource
from kielnet.errors import RunMismatchError
from kielnet.artifact import Bundle

__all__ = ["predict_chunks"]

#: worker-side cache: (bundle key, fingerprint) → (bundle, member networks)
_BUNDLES: "OrderedDict[tuple, tuple[Bundle, list]]" = OrderedDict()
_MAX_CACHED_BUNDLES = 2


# ----------------------------------------------------------------------------- worker side
def _worker_bundle(ref: tuple, bundle_obj: Bundle | None) -> tuple[Bundle, list]:
    """The bundle (and its built networks) for ``ref`` = (kind, path or None, fingerprint),
    loaded once per worker process."""
    kind, path, fingerprint = ref
    key = (kind, path, fingerprint)
    hit = _BUNDLES.get(key)
    if hit is not None:
        _BUNDLES.move_to_end(key)
        return hit
    if kind == "path":
        from kielnet.artifact import load_bundle

        bundle = load_bundle(path)
        if bundle.fingerprint() != fingerprint:
            raise RunMismatchError("the bundle on disk differs from the one this run started with (it was "
                                   "replaced while the run was going on)", source=str(path))
    else:
        bundle = bundle_obj
    hit = (bundle, bundle.build_members())
    _BUNDLES[key] = hit
    while len(_BUNDLES) > _MAX_CACHED_BUNDLES:
        _BUNDLES.popitem(last=False)
    return hit


def _chunk_task(ref: tuple, bundle_obj: Bundle | None, source: StarSource, k: int, opts: dict,
                run_chunk: Callable[..., dict]) -> dict:
    """One chunk on a worker (see module docstring): ``run_chunk`` is the streaming
    driver's own (:func:`kielnet.inference.streaming.run_chunk`), handed in so that this
    module does not import the driver that imports it."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("KIELNET_THREADS", "1")  # one core per worker: no pool of cpu_count threads each
    keep_large_allocations()
    bundle, nets = _worker_bundle(ref, bundle_obj)
    size = opts["chunk_size"]
    t0, c0 = time.perf_counter(), time.process_time()
    batches = source.batches(size, start=k * size)
    try:
        chunk = next(iter(batches), None)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    reading, reading_cpu = time.perf_counter() - t0, time.process_time() - c0
    if chunk is None or len(chunk) == 0:
        return {"k": int(k), "n_rows": 0, "beyond_end": True}
    return run_chunk(bundle, nets, chunk, k, reading=reading, reading_cpu=reading_cpu, **opts)


# ----------------------------------------------------------------------------- driver side
def _plan_rows(client, source: StarSource) -> None:
    """Let a source (or the source a mapped source wraps) that counts its rows per file
    (``plan_rows(map_)``) count them on the cluster, one task per file, before it is sent."""
    s = source
    while s is not None:
        plan = getattr(s, "plan_rows", None)
        if callable(plan):
            plan(lambda fn, items: client.gather(client.map(fn, items, pure=False)))
            return
        s = getattr(s, "base", None)


def predict_chunks(cluster: Any, bundle: Bundle, bundle_path, source: StarSource, opts: dict, *,
                   n_rows: int | None, run_chunk: Callable[..., dict], bar=None) -> list[dict]:
    """Run every chunk as a task (``run_chunk(bundle, nets, chunk, k, **opts)`` on a
    worker); the chunk summaries in input order (see module docstring)."""
    from distributed import as_completed, wait

    size = opts["chunk_size"]
    n_chunks = None if n_rows is None else max(1, math.ceil(n_rows / size))
    with cluster_client(cluster) as client:
        fingerprint = bundle.fingerprint()
        if bundle_path is not None:
            ref, bundle_arg = ("path", str(Path(bundle_path).resolve()), fingerprint), None
        else:
            ref = ("object", None, fingerprint)
            bundle_arg = client.scatter(bundle, broadcast=True, hash=False)
        _plan_rows(client, source)
        source_arg = client.scatter(source, broadcast=False, hash=False)
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        if bar is not None:  # stars/s from here on, not counting the cluster's start
            bar.reset(total=n_rows)
        window = max(2, 2 * n_workers)
        done: dict[int, dict] = {}
        end = n_chunks  # number of chunks, once known
        next_k = 0
        pending = as_completed()
        run_key = uuid.uuid4().hex

        def submit() -> None:
            nonlocal next_k
            pending.add(client.submit(_chunk_task, ref, bundle_arg, source_arg, next_k, opts, run_chunk, pure=False,
                                      key=f"kielnet-chunk-{next_k:06d}-{run_key}"))
            next_k += 1

        try:
            for _ in range(window if end is None else min(window, end)):
                submit()
            for fut in pending:
                s = fut.result()
                if s.get("beyond_end"):
                    end = s["k"] if end is None else min(end, s["k"])
                else:
                    done[s["k"]] = s
                    if s["n_rows"] < size:
                        end = s["k"] + 1 if end is None else min(end, s["k"] + 1)
                    if bar is not None:
                        bar.update(s["n_rows"])
                if end is None or next_k < end:
                    submit()
        except Exception:
            # a chunk failed: let the chunks in flight finish (their parts are kept for a
            # resume and no straggler writes into the parts directory later), then report
            in_flight = list(getattr(pending, "futures", ()))
            if in_flight:
                wait(in_flight)
            raise
        except BaseException:  # interrupted: stop at once
            in_flight = list(getattr(pending, "futures", ()))
            if in_flight:
                client.cancel(in_flight)
            raise
    if end is None:  # pragma: no cover - the loop only ends once the end is known
        raise RuntimeError("the chunk loop ended before the end of the input was found")
    missing = [k for k in range(end) if k not in done]
    if missing or end == 0:
        from kielnet.errors import InputError

        if end == 0:
            raise InputError("the input holds no stars", source=source.spec)
        raise RuntimeError(f"chunks {missing[:5]} were not computed; this is a kielnet bug")
    return [done[k] for k in range(end)]
