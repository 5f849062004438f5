"""Gradients over data spread across a Dask cluster: data parallel over the batch.

``value_and_grad``, ``grad`` and ``forward`` take a generated module and its
arguments by name, as the module's own functions do, with the inputs given
as Dask arrays whose examples lie along the first axis::

    import symgrad.dask as sgd
    loss, grads = sgd.value_and_grad(module, client=client, w=w, b=b, x=X, y=Y)

How it runs:

* Each chunk of the batch is one call of the module's kernel on a worker.
  The inputs are rechunked to the first Dask input's chunks along the batch
  axis and to one chunk along every other axis.
* A ``reduce="mean"`` model is called with ``mean_over=N`` (N: the examples
  of the whole batch), so each chunk returns its sum divided by N and the
  chunks' results add up to the mean; ``reduce="sum"`` chunks add as they
  are. The chunks' results are added by a tree of fixed shape, in chunk
  order, so the result is the same on every run, whichever worker computes
  what. It equals one call on all the data up to rounding (about 1e-15
  relative).
* Reduced results (the loss, parameter gradients) come back as numbers and
  NumPy arrays. Per-example results (outputs, gradients with respect to
  inputs, everything of a ``reduce=None`` model) come back as Dask arrays,
  kept in the cluster's memory, chunked as the inputs.
* The generated package travels to the workers by itself: its folder (a
  few hundred kB: the compiled extension, the wrapper, the C sources) is
  scattered to the cluster once per client and written into each worker's
  local directory the first time one of its tasks runs there. A worker
  that cannot load it (another platform or Python version, a damaged file)
  fails the call with :class:`WorkerLoadError`, naming the worker and the
  cause. Workers need NumPy, cffi, Dask and symgrad itself (this module's
  task functions), as a cluster running the client's environment has.

Params are shared by all chunks and are sent once per worker. Anything that
is not a Dask array (a param, or one example of an input) goes to every
chunk as it is. Options, popped from the arguments unless the model has a
symbol of the same name: ``client=`` (default: the current Dask client)
and ``progress=True`` (Dask's progress bar while the chunks run).
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import dask
    import dask.array as da
    import distributed
except ImportError as exc:  # pragma: no cover - exercised where Dask is missing
    raise ImportError(f"symgrad.dask needs Dask: pip install 'symgrad[dask]' ({exc})") from None

from .build import MANIFEST, load
from .errors import ArgumentError, BuildError
from .wheel import package_files

__all__ = ["value_and_grad", "grad", "forward", "WorkerLoadError"]

#: Partial results added per task of the reduction tree.
FAN_IN = 4


class WorkerLoadError(BuildError):
    """A Dask worker cannot load a generated package (the message names the worker and why)."""


@dataclass(frozen=True)
class Package:
    """A generated package's files, as they travel to the workers."""

    name: str
    key: str
    files: tuple  # (file name, bytes), sorted


# --- the three functions ------------------------------------------------------------------


def value_and_grad(module, **arrays):
    """(loss, {name: gradient}) of ``module`` over the Dask arrays in ``arrays``; see the module docstring."""
    results = _run(module, "value_and_grad", arrays)
    loss = results.pop("loss")
    return loss, results


def grad(module, **arrays):
    """{name: gradient} of ``module`` over the Dask arrays in ``arrays``."""
    results = _run(module, "value_and_grad", arrays)
    results.pop("loss")
    return results


def forward(module, **arrays):
    """The outputs (Dask arrays, per example) and the loss of ``module`` over the Dask arrays in ``arrays``."""
    return _run(module, "forward", arrays)


# --- the client's side -----------------------------------------------------------------------


def _run(module, kind: str, arrays: dict) -> dict:
    declared = {**module.PARAMS, **module.INPUTS}
    client = arrays.pop("client", None) if "client" not in declared else None
    progress = arrays.pop("progress", False) if "progress" not in declared else False
    client = client if client is not None else _default_client()
    reduce = module.REDUCE
    if reduce == "mean" and "mean_over" in declared:
        raise ArgumentError(f"the model {module.MODEL!r} declares a symbol named 'mean_over', which hides the "
                            f"call option symgrad.dask needs to add up the chunks' means; rename the symbol")
    batched, shared, n, starts = _split_arguments(module, arrays)
    names, per_example, tails = _result_layout(module, kind, batched, shared)
    package = _shipped(client, module)
    options = {"mean_over": n} if reduce == "mean" else {}
    fixed = dask.delayed(shared, pure=True, traverse=False)
    names_in, pieces = tuple(batched), [x.to_delayed().ravel() for x in batched.values()]
    call = dask.delayed(_chunk, pure=True)
    tasks = [call(package, kind, fixed, options, tuple(per_example), names_in, *(parts[k] for parts in pieces))
             for k, (start, stop) in enumerate(zip(starts[:-1], starts[1:])) if stop > start]
    if not tasks:
        raise ArgumentError("the batch has 0 examples: pass at least one")
    sizes = [stop - start for start, stop in zip(starts[:-1], starts[1:]) if stop > start]
    reduced_names = [name for name, each in zip(names, per_example) if not each]
    results = {}
    if not any(per_example):  # only sums: one graph, chunks and tree, computed at once
        root = client.compute(_tree(tasks))
        if progress:
            distributed.progress(root)  # the bar counts the chunks the sum depends on
        results.update(zip(reduced_names, root.result()[0]))
        return results
    futures = client.compute(tasks)  # per-example results stay on the workers, as futures
    if reduced_names:
        root = client.compute(_tree(futures))
        if progress:
            distributed.progress(futures + [root])
        totals, _ = root.result()
        results.update(zip(reduced_names, totals))
    elif progress:
        distributed.progress(futures)
    position = 0
    for name, each in zip(names, per_example):
        if not each:
            continue
        parts = [da.from_delayed(client.submit(_item, f, position, pure=True), shape=(size,) + tails[name],
                                 dtype=module.DTYPE) for f, size in zip(futures, sizes)]
        results[name] = da.concatenate(parts, axis=0)
        position += 1
    return {name: results[name] for name in names}


def _default_client():
    try:
        return distributed.get_client()
    except ValueError:
        raise ArgumentError("symgrad.dask runs on a Dask cluster: pass client=distributed.Client(...) "
                            "(or create a Client first)") from None


def _split_arguments(module, arrays: dict):
    """(Dask inputs rechunked alike, the other arguments, N, chunk boundaries along the batch)."""
    batched = {name: value for name, value in arrays.items() if isinstance(value, da.Array)}
    for name in batched:
        if name in module.PARAMS:
            raise ArgumentError(f"param {name!r} is a Dask array; params are shared by every example: pass a "
                                f"number or a NumPy array")
        if name not in module.INPUTS:
            raise ArgumentError(f"unknown argument {name!r}; this model takes: "
                                f"{', '.join(sorted({**module.PARAMS, **module.INPUTS}))}")
    if not batched:
        raise ArgumentError("symgrad.dask needs at least one input as a Dask array, its examples along the "
                            "first axis; for NumPy data call the module itself")
    first = next(iter(batched))
    lead = batched[first]
    if lead.ndim == 0 or any(np.isnan(c) for c in lead.chunks[0]):
        raise ArgumentError(f"input {first!r} needs a batch axis of known chunk sizes (call "
                            f"compute_chunk_sizes() on it first)")
    n = lead.shape[0]
    for name, x in batched.items():
        if x.ndim == 0 or x.shape[0] != n:
            raise ArgumentError(f"batch sizes disagree: input {name!r} has "
                                f"{x.shape[0] if x.ndim else 'no batch axis'} examples but input {first!r} has {n}")
        batched[name] = x.rechunk((lead.chunks[0],) + tuple(-1 for _ in x.shape[1:]))
    starts = [0]
    for size in lead.chunks[0]:
        starts.append(starts[-1] + size)
    shared = {name: value for name, value in arrays.items() if name not in batched}
    return batched, shared, n, starts


def _result_layout(module, kind, batched, shared):
    """(result names in order, which are per example, the per-example shape of each of those).

    Shapes come from a call of the module on one example of zeros (no data is read)."""
    probe = dict(shared)
    probe.update({name: np.zeros((1,) + x.shape[1:], x.dtype) for name, x in batched.items()})
    if kind == "forward":
        values = module.forward(**probe)
        names = list(values)
        per_example = [name != "loss" or module.REDUCE is None for name in names]
    else:
        loss, gradients = module.value_and_grad(**probe)
        values = {"loss": loss, **gradients}
        names = list(values)
        per_example = [module.REDUCE is None if name == "loss" else
                       (name in batched if name in module.INPUTS else module.REDUCE is None) for name in names]
    tails = {name: np.shape(values[name])[1:] for name, each in zip(names, per_example) if each}
    return names, per_example, tails


def _tree(parts):
    """The sum of the chunks' reduced results (Delayed), added FAN_IN at a time in chunk order:
    a tree of fixed shape, so the additions happen in the same order on every run."""
    level = list(parts)
    while True:
        level = [dask.delayed(_add, pure=True)(*level[i:i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
        if len(level) == 1:
            return level[0]


_clients_lock = threading.Lock()
_shipments: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _shipped(client, module):
    """A future of the module's :class:`Package` on the cluster, scattered once per client."""
    path = Path(module.__file__).resolve().parent
    key = module.BUILD_KEY
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path} holds no built symgrad package ({exc}); load the module with "
                         f"symgrad.compile or symgrad.build.load") from None
    if manifest.get("key") != key:
        raise BuildError(f"{path} was rebuilt after this module was loaded (build {manifest.get('key', '?')[:16]}, "
                         f"the module's is {key[:16]}): load it again before sending it to the workers")
    with _clients_lock:
        cache = _shipments.setdefault(client, {})
        future = cache.get(key)
        if future is None or future.status != "finished":  # new, or lost (a restarted cluster)
            files = tuple((f.name, f.read_bytes()) for f in package_files(path, manifest["extension_file"]))
            package = Package(path.name, key, files)
            future = cache[key] = client.scatter(package, broadcast=True, hash=True)
    return future


# --- the workers' side -------------------------------------------------------------------------

_loading = threading.Lock()


def module_on_worker(package: Package):
    """The generated module on this worker: written into its local directory and loaded, once."""
    try:
        worker = distributed.get_worker()
        address, directory = worker.address, Path(worker.local_directory)
    except ValueError:  # not on a worker (a local scheduler): the process's temporary folder
        import tempfile

        address, directory = "this process", Path(tempfile.gettempdir())
    folder = directory / f"symgrad-{package.name}-{package.key[:16]}" / package.name
    with _loading:
        try:
            if not (folder / MANIFEST).is_file():
                staging = folder.parent / f".staging-{package.name}"
                staging.mkdir(parents=True, exist_ok=True)
                for name, data in package.files:
                    (staging / name).write_bytes(data)
                staging.replace(folder)  # the manifest arrives with the rest, never before
            module = load(folder)
            if module.BUILD_KEY != package.key:
                raise BuildError(f"{folder} holds build {module.BUILD_KEY[:16]}, not {package.key[:16]}")
        except Exception as exc:
            raise WorkerLoadError(f"worker {address} cannot load the generated package {package.name!r} "
                                  f"(build {package.key[:16]}) from {folder}: {type(exc).__name__}: {exc}") from None
    return module


def _chunk(package, kind, shared, options, per_example, names, *chunks):
    """One kernel call on one chunk (the inputs ``names``): (reduced results, per-example results),
    each in result order. Positional chunks keep the graph cheap to build."""
    module = module_on_worker(package)
    arrays = {**shared, **dict(zip(names, chunks))}
    if kind == "forward":
        values = list(module.forward(**arrays, **options).values())
    else:
        loss, gradients = module.value_and_grad(**arrays, **options)
        values = [loss, *gradients.values()]
    reduced = tuple(v for v, each in zip(values, per_example) if not each)
    return reduced, tuple(v for v, each in zip(values, per_example) if each)


def _add(*parts):
    """The reduced results of several chunks (or subtotals), added in the order given; a
    (reduced, per-example) pair like a chunk's, with no per-example part."""
    totals = [np.array(v, copy=True) if isinstance(v, np.ndarray) else v for v in parts[0][0]]
    for reduced, _ in parts[1:]:
        for k, v in enumerate(reduced):
            totals[k] = totals[k] + v
    return tuple(totals), ()


def _item(part, position):
    """The per-example result at ``position`` of a chunk."""
    return part[1][position]
