"""Small synthetic site datasets in the two layouts a site may hold, for rehearsing a deployment
and for tests: a MedMNIST-format .npz and a folder of PNG images in class subfolders.

The pictures come from `fl_app.data.synthetic` (learnable, MedMNIST-like), so a rehearsal trains
on something with signal while no real patient data is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fl_app.data.arrays import SPLITS, SplitArrays
from fl_app.data.site_files import SOURCE_ARRAY, SOURCE_FILE
from fl_app.data.synthetic import synthetic_images, synthetic_labels, write_npz
from fl_app.data.tasks import task_info


def demo_split(flag: str, split: str, n: int, size: int = 28, seed: int = 0) -> SplitArrays:
    """The first `n` samples of a synthetic MedMNIST split."""
    labels = synthetic_labels(flag, split, seed)[:n]
    return SplitArrays(synthetic_images(flag, size, split, np.arange(len(labels)), labels, seed), labels)


def write_demo_npz(path: Path, flag: str, n_train: int = 200, n_eval: int = 60, seed: int = 0) -> Path:
    """A small MedMNIST-format file of `flag` (28 px), e.g. a site's `breastmnist.npz`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(path, {split: demo_split(flag, split, n_train if split == "train" else n_eval, seed=seed) for split in SPLITS})
    with np.load(path) as archive:  # add the marker: results.json records these as synthetic, not medmnist
        arrays = dict(archive)
    np.savez_compressed(path, **arrays, **{SOURCE_ARRAY: np.array("synthetic")})
    return path


def write_demo_image_folder(path: Path, classes: Sequence[str], n_images: int = 150, flag: str = "pneumoniamnist", seed: int = 0) -> Path:
    """`path/<class>/<i>.png`: synthetic `flag` images, one class folder per label of `flag`.

    Sizes vary from 40 to 72 px and every third image is grayscale, as real exports do.
    """
    if len(classes) != task_info(flag).n_outputs:
        raise ValueError(f"{flag} has {task_info(flag).n_outputs} classes; got {len(classes)} names {list(classes)}")
    arrays = demo_split(flag, "train", n_images, size=64, seed=seed)
    for i, (image, label) in enumerate(zip(arrays.images, arrays.labels[:, 0], strict=True)):
        folder = path / sorted(classes)[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image).resize((40 + 8 * (i % 5),) * 2)
        (picture if i % 3 == 0 else picture.convert("RGB")).save(folder / f"{i:04d}.png")
    (path / SOURCE_FILE).write_text("synthetic\n")  # results.json records these as synthetic, not images
    return path
