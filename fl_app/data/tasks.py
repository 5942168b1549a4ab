"""What a task is (outputs, channels, label names): a MedMNIST 2D flag, read from `medmnist.INFO`,
or a site's own image-folder task declared in the experiment (`data=site`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fl_app.data.medmnist_info import INFO

#: Every 2D MedMNIST flag; the 3D volumes (`*mnist3d`) need a different model and are left out.
TWO_D_FLAGS: tuple[str, ...] = tuple(flag for flag in INFO if not flag.endswith("3d"))

#: Image sizes MedMNIST+ ships for 2D tasks (28 is the original `{flag}.npz`).
SIZES: tuple[int, ...] = (28, 64, 128, 224)

MULTI_LABEL_TASK = "multi-label, binary-class"


@dataclass(frozen=True)
class TaskInfo:
    """The facts a model head and a loss need about one task."""

    name: str
    task_type: str
    n_outputs: int
    n_channels: int
    label_names: tuple[str, ...]

    @property
    def multi_label(self) -> bool:
        """True for ChestMNIST-style tasks: one independent 0/1 target per label."""
        return self.task_type == MULTI_LABEL_TASK


def task_info(flag: str) -> TaskInfo:
    """TaskInfo of a 2D MedMNIST flag; ValueError listing the valid flags otherwise."""
    if flag not in TWO_D_FLAGS:
        raise ValueError(f"unknown 2D MedMNIST flag {flag!r}; valid flags: {', '.join(TWO_D_FLAGS)}")
    info = INFO[flag]
    labels = info["label"]
    names = tuple(labels[k] for k in sorted(labels, key=int))
    return TaskInfo(
        name=flag,
        task_type=info["task"],
        n_outputs=len(names),
        n_channels=int(info["n_channels"]),
        label_names=names,
    )


def n_samples(flag: str, split: str) -> int:
    """Official number of samples of `split` ('train', 'val', 'test') for `flag`."""
    return int(INFO[task_info(flag).name]["n_samples"][split])


def npz_name(flag: str, size: int) -> str:
    """File name MedMNIST uses: `{flag}.npz` for 28 px, `{flag}_{size}.npz` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


# site tasks (deployment) ----------------------------------------------------------------------

#: A task name becomes a head's module name and a key prefix in adapters: no dots or spaces.
TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def folder_task(name: str, classes: Sequence[str]) -> TaskInfo:
    """A site's own image-classification task: one label per image, classes in sorted order.

    The order is the label index, the same as the sorted class-subfolder names of an image folder.
    """
    if not TASK_NAME.match(str(name)):
        raise ValueError(f"task name {name!r} must start with a letter and hold only letters, digits, '_' or '-'")
    names = sorted(str(c) for c in classes)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"task {name!r} needs at least two distinct classes, got {list(classes)!r}")
    task_type = "binary-class" if len(names) == 2 else "multi-class"
    return TaskInfo(name=str(name), task_type=task_type, n_outputs=len(names), n_channels=3, label_names=tuple(names))


def declared_task(name: str, spec: Mapping[str, Any] | None) -> TaskInfo:
    """One entry of `data.tasks`: a MedMNIST flag (no spec) or a site task with its `classes`."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - {"classes"})
    if unknown:
        raise ValueError(f"data.tasks.{name} has unknown keys {unknown}; the only key is 'classes' (a list of class names)")
    if "classes" not in spec:
        if name not in TWO_D_FLAGS:
            raise ValueError(
                f"data.tasks.{name} is not a MedMNIST flag, so it needs its classes: "
                f"data.tasks.{name}.classes=[<class folder names>]; MedMNIST flags: {', '.join(TWO_D_FLAGS)}"
            )
        return task_info(name)
    if name in TWO_D_FLAGS:
        raise ValueError(f"data.tasks.{name} is a MedMNIST flag: its classes come from medmnist.INFO; remove 'classes'")
    classes = spec["classes"]
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ValueError(f"data.tasks.{name}.classes must be a list of class names, got {classes!r}")
    return folder_task(name, classes)
