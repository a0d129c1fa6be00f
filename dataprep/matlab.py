"""MATLAB files of the released datasets: v5 through scipy, v7.3 (HDF5) through h5py. Errors
name the file and, where given, the sample."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io

from shards.schema import SampleError


def load_mat_v5(path: Path, what: str, variables: list[str] | None = None, sample: str | None = None) -> dict:
    """A MATLAB v5 .mat file -> {name: array} (scipy.io; cell arrays become object arrays)."""
    try:
        return scipy.io.loadmat(str(path), variable_names=variables, squeeze_me=False)
    except FileNotFoundError:
        raise SampleError(f"{what} missing", file=str(path), sample=sample) from None
    except NotImplementedError:
        raise SampleError(f"{what} is a MATLAB v7.3 (HDF5) file, expected v5", file=str(path), sample=sample) from None
    except Exception as e:
        raise SampleError(f"unreadable {what}: {e}", file=str(path), sample=sample) from None


def open_mat73(path: Path, what: str, sample: str | None = None) -> h5py.File:
    """A MATLAB v7.3 .mat file (HDF5) opened read-only with h5py. MATLAB stores arrays
    column-major, so h5py sees every array with its dimensions reversed."""
    if not Path(path).exists():
        raise SampleError(f"{what} missing", file=str(path), sample=sample)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise SampleError(f"unreadable {what} (not MATLAB v7.3 / HDF5?): {e}", file=str(path), sample=sample) from None


def mat73_dataset(f: h5py.File, name: str, what: str, sample: str | None = None) -> np.ndarray:
    if name not in f:
        raise SampleError(f"{what} lacks {name!r}", file=f.filename, sample=sample)
    return np.asarray(f[name][()])
