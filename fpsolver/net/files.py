"""Readers of the network run files (h5py only, no torch): ``record.h5`` and ``eigen.h5``.

Formats: ``fpsolver-net-record`` v1 (written by :mod:`fpsolver.net.record`, documented
there) and ``fpsolver-net-eigen`` v1 (written by :func:`fpsolver.net.pipeline.save_eigen`).
A run recorded on a GPU machine can be compared anywhere h5py is installed.
"""

import json

import h5py

from ..errors import UserError

RECORD_FORMAT, RECORD_VERSION = "fpsolver-net-record", 1
EIGEN_FORMAT, EIGEN_VERSION = "fpsolver-net-eigen", 1
SERIES = ("theta_proj", "buf_proj", "dist2", "step_norm2", "theta_norm2", "loss")


def _attrs(f):
    return {key: (val.item() if hasattr(val, "item") else val) for key, val in f.attrs.items()}


def _check(f, path, fmt, version):
    if f.attrs.get("format") != fmt:
        raise UserError(f"{path} is not an {fmt} file")
    if int(f.attrs["version"]) > version:
        raise UserError(f"{path} has {fmt} version {f.attrs['version']}; this fpsolver reads "
                        f"up to {version}")


def load_record(path):
    """The recording as a dict of numpy arrays plus ``attrs`` (dict, ``meta`` decoded)."""
    with h5py.File(path, "r") as f:
        _check(f, path, RECORD_FORMAT, RECORD_VERSION)
        out = {name: f[name][:] for name in ("step", "eigenvalues") + SERIES}
        attrs = _attrs(f)
    attrs["meta"] = json.loads(attrs.get("meta", "{}"))
    out["attrs"] = attrs
    return out


def load_eigen(path, vectors=False):
    """An eigen file as one dict of arrays and attributes (``vectors`` (k, n) only when asked)."""
    with h5py.File(path, "r") as f:
        _check(f, path, EIGEN_FORMAT, EIGEN_VERSION)
        out = {key: f[key][:] for key in f if vectors or key != "vectors"}
        out.update(_attrs(f))
    return out
