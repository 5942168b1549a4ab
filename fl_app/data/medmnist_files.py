"""Load real MedMNIST files through medmnist's own dataset classes (so its checks run)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request

import numpy as np

from fl_app.data.arrays import SPLITS, SplitArrays
from fl_app.data.medmnist_info import INFO
from fl_app.data.tasks import SIZES, npz_name, task_info


class MedMNISTUnavailable(RuntimeError):
    """A MedMNIST file cannot be used: missing, download failed, or wrong split sizes."""

    def __init__(self, flag: str, size: int, root: str, reason: str, download: bool = False, missing: bool = False):
        self.flag, self.size, self.root, self.reason, self.missing = flag, size, root, reason, missing
        fix = f"put {npz_name(flag, size)} under {root}" + ("" if download else " or enable download")
        super().__init__(f"MedMNIST {flag!r} ({size}px) unavailable under {root}: {reason}; fix: {fix}")


def expand_root(root: str | os.PathLike) -> str:
    """Absolute data root with `~` expanded; the form used in messages and cache keys."""
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def load_medmnist_split(
    flag: str, split: str, root: str | os.PathLike, size: int = 28, download: bool = False
) -> SplitArrays:
    """One split of `{root}/{flag}[_{size}].npz` via `medmnist.<PythonClass>`."""
    info = task_info(flag)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if size not in SIZES:
        raise ValueError(f"unknown MedMNIST size {size!r}; valid sizes: {SIZES}")
    root = expand_root(root)
    if not os.path.isdir(root):
        raise MedMNISTUnavailable(
            flag, size, root, "the root directory does not exist (create it)", download, missing=True
        )
    import medmnist  # its dataset classes; imported here, not with the data package (see medmnist_info)

    dataset_class = getattr(medmnist, INFO[flag]["python_class"], None)
    if dataset_class is None:  # medmnist swallows import errors of torch/PIL in its __init__
        raise ImportError(f"medmnist.{INFO[flag]['python_class']} is missing: check that torch and Pillow import")
    # medmnist's own download() imports torchvision, which this project does not install: fetch here
    if download and not os.path.exists(os.path.join(root, npz_name(flag, size))):
        download_medmnist_file(flag, size, root)
    try:
        ds = dataset_class(split=split, root=root, size=size, download=False)
    except RuntimeError as e:
        raise MedMNISTUnavailable(flag, size, root, f"{npz_name(flag, size)} not found", download, missing=True) from e
    except (KeyError, ValueError, OSError) as e:  # unreadable archive or missing keys
        raise MedMNISTUnavailable(flag, size, root, f"unreadable file ({e})", download) from e
    try:
        n = len(ds)  # medmnist asserts the official split size here
    except AssertionError as e:
        expected = INFO[flag]["n_samples"][split]
        reason = f"{split} split has {ds.imgs.shape[0]} images, expected {expected}"
        raise MedMNISTUnavailable(flag, size, root, reason, download) from e
    images = np.asarray(ds.imgs)
    expected_ndim = 4 if info.n_channels == 3 else 3
    if images.dtype != np.uint8 or images.ndim != expected_ndim or images.shape[1:3] != (size, size):
        layout = f"(N, {size}, {size}, 3)" if expected_ndim == 4 else f"(N, {size}, {size})"
        reason = f"{split}_images is {images.dtype} {images.shape}, expected uint8 {layout}"
        raise MedMNISTUnavailable(flag, size, root, reason, download)
    # some published copies store single-label targets as 1-D (N,)
    labels = np.asarray(ds.labels).reshape(n, -1).astype(np.int64)
    return SplitArrays(images=images, labels=labels)


def load_medmnist_task(
    flag: str, root: str | os.PathLike, size: int = 28, download: bool = False
) -> dict[str, SplitArrays]:
    """All three official splits of one task; MedMNISTUnavailable if the file cannot be used."""
    return {
        split: load_medmnist_split(flag, split, root, size, download=download and i == 0)
        for i, split in enumerate(SPLITS)
    }


def download_medmnist_file(flag: str, size: int, root: str, timeout: float = 60.0) -> str:
    """Fetch `{flag}[_{size}].npz` from MedMNIST's Zenodo record into `root`, checked against the
    MD5 medmnist publishes (a wrong or partial file never replaces anything: temp file + rename)."""
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = INFO[flag][f"url{suffix}"], INFO[flag][f"MD5{suffix}"]
    target = os.path.join(root, npz_name(flag, size))
    handle, partial = tempfile.mkstemp(dir=root, prefix=f".{npz_name(flag, size)}.", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise MedMNISTUnavailable(flag, size, root, f"download from {url} has MD5 {digest.hexdigest()}, expected {md5}", True)
        os.replace(partial, target)
    except (OSError, ValueError) as error:  # urllib's URLError and timeouts are OSErrors
        raise MedMNISTUnavailable(flag, size, root, f"download from {url} failed ({error})", True, missing=True) from error
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target
