"""What a MedMNIST 2D task is (outputs, channels, label names), read from `medmnist.INFO`."""

from __future__ import annotations

from dataclasses import dataclass

from medmnist import INFO

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
