"""MedForge data layer: MedMNIST tasks, synthetic stand-ins, hospital partitions, site data (no Flower here)."""

from fl_app.data.arrays import SPLITS, SplitArrays
from fl_app.data.hospital import (
    DATA_KEYS,
    SCENARIOS,
    HospitalData,
    clear_task_cache,
    experiment_tasks,
    hospital_tasks,
    load_hospital,
    synthetic_stand_ins,
    validate_data_config,
)
from fl_app.data.medmnist_files import MedMNISTUnavailable, load_medmnist_split, load_medmnist_task
from fl_app.data.partition import (
    SCHEMES,
    class_proportions,
    partition_indices,
    partition_splits,
    split_by_proportions,
)
from fl_app.data.site import SITE_KEYS, SiteConfig, load_site, site_config
from fl_app.data.site_files import SiteDataError, read_image_folder, read_npz_splits
from fl_app.data.synthetic import (
    apply_site_shift,
    synthetic_images,
    synthetic_labels,
    synthetic_task,
    write_npz,
)
from fl_app.data.tasks import SIZES, TWO_D_FLAGS, TaskInfo, declared_task, folder_task, task_info

__all__ = [
    "DATA_KEYS",
    "SCENARIOS",
    "SCHEMES",
    "SITE_KEYS",
    "SIZES",
    "SPLITS",
    "SiteConfig",
    "SiteDataError",
    "TWO_D_FLAGS",
    "HospitalData",
    "MedMNISTUnavailable",
    "SplitArrays",
    "TaskInfo",
    "apply_site_shift",
    "class_proportions",
    "clear_task_cache",
    "declared_task",
    "experiment_tasks",
    "folder_task",
    "hospital_tasks",
    "load_hospital",
    "load_site",
    "load_medmnist_split",
    "load_medmnist_task",
    "partition_indices",
    "partition_splits",
    "read_image_folder",
    "read_npz_splits",
    "site_config",
    "split_by_proportions", "synthetic_stand_ins",
    "synthetic_images",
    "synthetic_labels",
    "synthetic_task",
    "task_info",
    "validate_data_config",
    "write_npz",
]
