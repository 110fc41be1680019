"""The one checkpoint format of every training loop in the project.

A checkpoint is a ``dict`` written with ``torch.save`` to a temporary file in the target's directory,
flushed to disk, then renamed over the target with ``os.replace`` (atomic on POSIX and Windows): a run
killed while saving leaves the previous checkpoint intact, never a truncated one.

It loads with ``torch.load(path, weights_only=True)``: only tensors, dicts, lists, tuples, numbers,
strings, booleans and ``None`` are inside (optimizer and scheduler state dicts are such; RNG states are
``uint8`` tensors), so loading a checkpoint cannot run code (the reason ``weights_only=True`` is
PyTorch's default since 2.6). ``save_checkpoint`` checks this before writing and names the offending
entry, so a NumPy scalar in a history fails at the save, not at the next resume.

Fields::

    format       "sciml-solvers.checkpoint"
    version      FORMAT_VERSION (1)
    kind         "train" (resumable) or "weights" (a model and its config only)
    model_class  class name of the model
    fingerprint  {"class": ..., "parameters": [[name, [shape...]], ...], "hash": sha256}
    config       the settings that define the run (no run-length or bookkeeping settings)
    config_hash  sha256 of the canonical JSON of ``config``
    model        the model's state_dict
    ...          what the writer adds (optimizer, scheduler, rng, trainer state, history)

``check_compatible`` compares a loaded checkpoint with the model and config at hand and raises
``CheckpointMismatch`` (a ``ValueError``) that says what differs: the class, the parameters only on one
side or of another shape, or each config entry with its two values. The fingerprint holds names and
shapes, not values, so it does not change while a model trains.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "CheckpointMismatch", "model_fingerprint",
           "config_hash", "save_checkpoint", "read_checkpoint", "check_compatible", "load_checkpoint"]

FORMAT = "sciml-solvers.checkpoint"
FORMAT_VERSION = 1

# exact types: a NumPy float64 *is* a float subclass, and weights_only=True refuses it
_SCALARS = (bool, int, float, str, type(None))
_TORCH_PLAIN = (torch.dtype, torch.device, torch.Size)


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this format (or cannot be read with ``weights_only=True``)."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint of another model or another configuration than the one being trained."""


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel (and DataParallel) keep the model in .module; a checkpoint never holds
    # the wrapper's "module." prefixed names, so one written on K ranks loads on 1 and vice versa.
    while hasattr(model, "module") and isinstance(model.module, nn.Module) and type(model).__name__ in (
            "DistributedDataParallel", "DataParallel"):
        model = model.module
    return model


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Class name and parameter names/shapes of ``model`` (unwrapped from DDP), with their sha256."""
    model = _unwrap(model)
    params = [[name, [int(s) for s in p.shape]] for name, p in model.named_parameters()]
    text = json.dumps([type(model).__name__, params], separators=(",", ":"))
    return {"class": type(model).__name__, "parameters": params,
            "hash": hashlib.sha256(text.encode()).hexdigest()}


def _canonical(value: Any) -> Any:
    """A JSON-able, order-independent form of a config value (floats by ``repr``: exact)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    return repr(value)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (keys sorted, floats exact)."""
    text = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _check_plain(obj: Any, where: str) -> None:
    """Raise ``TypeError`` naming the first entry ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, (Tensor, *_TORCH_PLAIN)) or type(obj) in _SCALARS:
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if type(k) not in _SCALARS:
                raise TypeError(f"checkpoint entry {where} has a key of type {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint entry {where} is a {type(obj).__module__}.{type(obj).__qualname__}: a "
                    "checkpoint holds only tensors, numbers, strings, booleans, None, lists and dicts "
                    "(it loads with torch.load(weights_only=True)); convert it (float(x), x.tolist())")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, config: Mapping[str, Any] | None = None,
                    kind: str = "train", **state: Any) -> None:
    """Write ``model``'s state, fingerprint and ``config`` (with its hash) and ``state`` atomically.

    ``state``: further entries (optimizer state dict, RNG states, history, ...), all loadable with
    ``weights_only=True`` (checked first: ``TypeError`` naming the entry)."""
    if kind not in ("train", "weights"):
        raise ValueError(f"kind must be 'train' or 'weights', got {kind!r}")
    reserved = {"format", "version", "kind", "model_class", "fingerprint", "config", "config_hash", "model"}
    clash = sorted(reserved & set(state))
    if clash:
        raise ValueError(f"checkpoint entries {clash} are reserved")
    model = _unwrap(model)
    cfg = dict(config or {})
    payload: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind,
                               "model_class": type(model).__name__, "fingerprint": model_fingerprint(model),
                               "config": cfg, "config_hash": config_hash(cfg), "model": model.state_dict(),
                               **state}
    _check_plain(payload, "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint of this format as a dict (``torch.load(weights_only=True)``); ``CheckpointError`` for
    anything else, saying what the file is."""
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError ...
        raise CheckpointError(f"{path} cannot be read as a checkpoint with torch.load(weights_only=True): "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. A file "
                              "that pickles Python objects was not written by this format") from err
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        keys = sorted(ck)[:8] if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"{path} is not a {FORMAT} file (found {keys}); checkpoints written before the "
                              "trainer was shared (without 'format') cannot be resumed: delete it to start "
                              "the run again")
    version = ck.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this version of the "
                              f"package reads versions up to {FORMAT_VERSION}")
    return ck


def _describe_params(params: list[list[Any]]) -> dict[str, tuple[int, ...]]:
    return {str(n): tuple(s) for n, s in params}


def _fmt(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)


def check_compatible(ck: Mapping[str, Any], model: nn.Module | None = None,
                     config: Mapping[str, Any] | None = None, path: str | os.PathLike = "checkpoint") -> None:
    """``CheckpointMismatch`` unless ``ck`` was written for a model of the same class and parameter
    shapes as ``model`` and with the same ``config`` (either check skipped when ``None``)."""
    problems: list[str] = []
    if model is not None:
        mine = model_fingerprint(model)
        theirs = ck.get("fingerprint", {})
        if theirs.get("hash") != mine["hash"]:
            if theirs.get("class") != mine["class"]:
                problems.append(f"model class: {theirs.get('class')!r} in the checkpoint, {mine['class']!r} "
                                "here")
            a = _describe_params(theirs.get("parameters", []))
            b = _describe_params(mine["parameters"])
            only_ck, only_here = sorted(set(a) - set(b)), sorted(set(b) - set(a))
            if only_ck:
                problems.append(f"parameters only in the checkpoint: {', '.join(only_ck[:5])}"
                                + (" ..." if len(only_ck) > 5 else ""))
            if only_here:
                problems.append(f"parameters only in this model: {', '.join(only_here[:5])}"
                                + (" ..." if len(only_here) > 5 else ""))
            shapes = [f"{n} {a[n]} in the checkpoint, {b[n]} here" for n in a if n in b and a[n] != b[n]]
            if shapes:
                problems.append("parameter shapes: " + "; ".join(shapes[:5])
                                + (" ..." if len(shapes) > 5 else ""))
            if not (only_ck or only_here or shapes) and theirs.get("class") == mine["class"]:
                problems.append("parameter order differs")
    if config is not None and ck.get("config_hash") != config_hash(config):
        old = dict(ck.get("config", {}))
        new = dict(config)
        diffs = []
        for k in sorted(set(old) | set(new)):
            if k not in old:
                diffs.append(f"{k}: not in the checkpoint, {_fmt(new[k])} now")
            elif k not in new:
                diffs.append(f"{k}: {_fmt(old[k])} in the checkpoint, not set now")
            elif config_hash({k: old[k]}) != config_hash({k: new[k]}):
                diffs.append(f"{k}: {_fmt(old[k])} in the checkpoint, {_fmt(new[k])} now")
        problems.append("configuration: " + ("; ".join(diffs) if diffs else "hash differs"))
    if problems:
        raise CheckpointMismatch(f"checkpoint {path} was written for another run: " + " | ".join(problems)
                                 + ". Use another checkpoint file, or the model and settings it was written "
                                 "with")


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    config: Mapping[str, Any] | None = None, map_location: Any = "cpu",
                    strict: bool = True) -> dict[str, Any]:
    """Read ``path``, check it against ``model`` and ``config``, load its weights into ``model`` (when
    given) and return the whole checkpoint dict (for the caller's optimizer, RNG and loop state)."""
    ck = read_checkpoint(path, map_location)
    check_compatible(ck, model, config, path)
    if model is not None:
        _unwrap(model).load_state_dict(ck["model"], strict=strict)
    return ck
