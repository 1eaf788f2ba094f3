"""Atomic result files: write to a temporary name in the same folder, then rename.

A crash or Ctrl-C therefore never leaves a half-written result behind.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def make_output_folder(out, option="--out"):
    """Create the output folder ``out`` (and its parents) before any work, so that an
    unusable --out is a one-line error now, not a traceback after a long solve."""
    from .errors import UserError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {out} cannot be created: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{option} {out} is not writable")
    return out


def usual_permissions(path, directory=False):
    """Give ``path`` the mode a plain ``open``/``mkdir`` would (0666/0777 less the umask):
    mkstemp and mkdtemp create private (0600/0700) temporaries, and a rename keeps that."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_replace(path):
    """Yield a temporary path next to ``path``; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _jsonable(obj):
    """Convert numpy scalars and arrays (recursively) to plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(obj, indent=2):
    """JSON text of ``obj`` (numpy arrays become nested lists)."""
    return json.dumps(_jsonable(obj), indent=indent, allow_nan=True)


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_replace(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, to_json(obj) + "\n")


def atomic_savez(path, **arrays):
    """``np.savez_compressed`` to ``path`` atomically (the name keeps its suffix)."""
    with atomic_replace(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def read_checkpoint(path, key, fields=()):
    """Arrays of the npz checkpoint ``path`` as a dict, refusing one written for another
    problem (its stored ``key`` differs from ``key``) or lacking any of ``fields``."""
    from .errors import UserError
    try:
        with np.load(path) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    if str(data.get("key")) != str(key):
        raise UserError(f"checkpoint {path} belongs to another case/grid; rerun without --resume")
    missing = [name for name in fields if name not in data]
    if missing:
        raise UserError(f"checkpoint {path} is incomplete (no {', '.join(missing)}); rerun "
                        "without --resume")
    return data
