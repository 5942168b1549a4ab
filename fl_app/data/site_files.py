"""Read a hospital's own files: a MedMNIST-format .npz or a folder of images in class subfolders.

Both readers check what they read and raise `SiteDataError` naming the path, what is wrong and the
fix, because the error travels to the server as this hospital's failed reply.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fl_app.data.arrays import SPLITS, SplitArrays
from fl_app.data.tasks import TaskInfo

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Seeded split of an image folder (train, val, test), per class; MedMNIST's own ratio is about 7:1:2.
FOLDER_SPLIT = (0.7, 0.1, 0.2)


#: Data that are not patients' (the rehearsal's demo sites) say so: a `data_source` array in the
#: .npz, a `DATA_SOURCE` file in an image folder; results.json then records that source.
SOURCE_ARRAY = "data_source"
SOURCE_FILE = "DATA_SOURCE"


class SiteDataError(ValueError):
    """A site's dataset is missing or malformed."""


def declared_source(path: Path, default: str) -> str:
    """The data source a site file or folder declares (`synthetic` for demo data), else `default`."""
    try:
        if path.is_dir():
            marker = path / SOURCE_FILE
            return marker.read_text().strip() or default if marker.is_file() else default
        with np.load(path) as archive:
            return str(archive[SOURCE_ARRAY]) if SOURCE_ARRAY in archive else default
    except (OSError, ValueError, zipfile.BadZipFile):
        return default


def read_npz_splits(path: Path, task: TaskInfo) -> dict[str, SplitArrays]:
    """The file's own train/val/test splits (any split sizes, any square image size)."""
    try:
        with np.load(path) as archive:
            missing = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels") if f"{split}_{kind}" not in archive]
            if missing:
                raise SiteDataError(f"{path} lacks arrays {missing}; a MedMNIST-format file holds train/val/test _images and _labels")
            raw = {split: (archive[f"{split}_images"], archive[f"{split}_labels"]) for split in SPLITS}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        if isinstance(error, SiteDataError):
            raise
        raise SiteDataError(f"{path} is not a readable .npz file ({error}); export the data with numpy.savez") from error
    return {split: _npz_split(path, split, images, labels, task) for split, (images, labels) in raw.items()}


def _npz_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray, task: TaskInfo) -> SplitArrays:
    gray, rgb = images.ndim == 3, images.ndim == 4 and images.shape[-1] == 3
    if images.dtype != np.uint8 or not (gray or rgb):
        raise SiteDataError(f"{path}: {split}_images is {images.dtype} {images.shape}; expected uint8 (N, H, W) or (N, H, W, 3)")
    if len(images) == 0:
        raise SiteDataError(f"{path}: the {split} split is empty; every split needs images")
    labels = np.asarray(labels).reshape(len(labels), -1).astype(np.int64)
    columns = task.n_outputs if task.multi_label else 1
    top = 1 if task.multi_label else task.n_outputs - 1
    if len(labels) != len(images) or labels.shape[1] != columns or labels.min() < 0 or labels.max() > top:
        raise SiteDataError(
            f"{path}: {split}_labels has shape {labels.shape} and values {labels.min()}..{labels.max()}; "
            f"task {task.name!r} expects {len(images)} rows of {columns} label(s) in 0..{top} "
            "(is task= the right task for this file?)"
        )
    return SplitArrays(images=images, labels=labels)


def read_image_folder(path: Path, task: TaskInfo, image_size: int, seed: int) -> dict[str, SplitArrays]:
    """Every image under `path/<class>/`, resized to `image_size`, split per class by `seed`."""
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if set(classes) != set(task.label_names):
        raise SiteDataError(
            f"{path} has class folders {classes}, but task {task.name!r} has classes {list(task.label_names)}; "
            "make one subfolder per class, named as the experiment declares (data.tasks)"
        )
    images, labels = [], []
    for label, name in enumerate(task.label_names):
        files = sorted(f for f in (path / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            raise SiteDataError(f"{path / name} holds no PNG or JPEG images; every class needs images")
        images += [_read_image(f, image_size) for f in files]
        labels += [label] * len(files)
    splits = stratified_split(np.asarray(labels), seed)
    stacked, targets = np.stack(images), np.asarray(labels, dtype=np.int64)[:, None]
    for split, idx in splits.items():
        if len(idx) == 0:
            raise SiteDataError(f"{path}: only {len(targets)} images, none left for the {split} split; add images")
    return {split: SplitArrays(images=stacked[idx], labels=targets[idx]) for split, idx in splits.items()}


def _read_image(file: Path, image_size: int) -> np.ndarray:
    try:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise SiteDataError(f"{file} is not a readable image ({error}); remove or replace it") from error


def stratified_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Indices per split: each class shuffled by `seed` and cut by FOLDER_SPLIT (val and test rounded)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val, n_test = round(len(idx) * FOLDER_SPLIT[1]), round(len(idx) * FOLDER_SPLIT[2])
        n_train = len(idx) - n_val - n_test
        for split, chunk in zip(SPLITS, np.split(idx, [n_train, n_train + n_val])):
            parts[split].append(chunk)
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}
