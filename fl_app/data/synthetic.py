"""MedMNIST-format synthetic data, for when the real files are not on the machine.

Each label owns a seeded picture (two blobs, a ring and a Gabor grating, coloured for RGB flags) at
fixed positions; an image is its labels' pictures (superposed for multi-label tasks) with a random
amplitude and a small shift, over nuisance pictures shared by all classes, plus pixel noise. A
linear model already beats chance on it; a small ViT can learn it. Ordinal tasks (RetinaMNIST)
add a shared lesion picture scaled by the grade, so neighbouring grades look alike.

Per-sample randomness comes from a counter-based hash of (seed, flag, split, sample index), so any
subset of a split can be generated on its own and equals the same rows of the full split: a
hospital of PathMNIST at 224 px never materialises the other 89,000 images.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from fl_app.data.arrays import SPLITS, SplitArrays
from fl_app.data.seeding import derive_seed, stable_tag
from fl_app.data.tasks import SIZES, TaskInfo, n_samples, task_info

_N_NUISANCE = 4
_BASE_GRAY = 115.0
_CONTRAST = 55.0  # gray levels per unit of pattern
_AMPLITUDE = (0.4, 1.2)  # range of a label picture's weight in one image
_NUISANCE = 0.8  # nuisance pictures weigh up to +-this
_NOISE = 50.0  # half-width of the uniform pixel noise, gray levels
_JITTER = 0.1  # largest shift, fraction of the image side (5 steps per axis)
_CHUNK_ELEMENTS = 1 << 23  # ~32 MB of float32 per temporary; BLAS calls are costly here, keep them few


def _rng(seed: int, *tags: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *tags))


def _mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 integer hash (C. Wellons), elementwise on uint32 arrays (returns a new array)."""
    x = x ^ (x >> np.uint32(16))
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _to_unit(x: np.ndarray) -> np.ndarray:
    """uint32 hashes -> float32 uniforms in [0, 1)."""
    return (x >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def _sample_keys(flag: str, split: str, seed: int, ids: np.ndarray) -> np.ndarray:
    base = np.uint32(stable_tag(flag, split, int(seed)))
    return _mix32(_mix32(ids.astype(np.uint32) * np.uint32(0x9E3779B9) + base))


def _sample_uniforms(keys: np.ndarray, k: int) -> np.ndarray:
    """(N, k) independent uniforms per sample key."""
    streams = np.arange(1, k + 1, dtype=np.uint32) * np.uint32(0x85EBCA6B)
    return _to_unit(_mix32(keys[:, None] ^ streams[None, :]))


# labels ---------------------------------------------------------------------------------------


def _class_priors(info: TaskInfo, seed: int) -> np.ndarray:
    """Label frequencies: single-label classes 4:1 from most to least common; 3-20% per multi-label."""
    rng = _rng(seed, info.name, "priors")
    if info.multi_label:
        return rng.uniform(0.03, 0.20, size=info.n_outputs)
    weights = np.exp(-np.log(4.0) * np.arange(info.n_outputs) / max(info.n_outputs - 1, 1))
    weights = rng.permutation(weights)
    return weights / weights.sum()


def synthetic_labels(flag: str, split: str, seed: int) -> np.ndarray:
    """Labels of one synthetic split: int64 (N, 1), or (N, L) of 0/1 for multi-label tasks."""
    info = task_info(flag)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    n = n_samples(flag, split)
    rng = _rng(seed, flag, "labels", split)
    priors = _class_priors(info, seed)
    if info.multi_label:
        return (rng.random((n, info.n_outputs)) < priors).astype(np.int64)
    return rng.choice(info.n_outputs, size=n, p=priors).astype(np.int64)[:, None]


# patterns -------------------------------------------------------------------------------------


def _component_params(rng: np.random.Generator) -> list[tuple[str, np.ndarray, float]]:
    """Shapes of one picture, in image-relative coordinates (so all sizes show the same picture)."""
    comps = []
    for _ in range(2):  # blobs, brighter or darker than the background
        cx, cy = rng.uniform(0.2, 0.8, 2)
        comps.append(("blob", np.array([cx, cy, rng.uniform(0.05, 0.12)]), rng.choice([-1.0, 1.0])))
    cx, cy = rng.uniform(0.3, 0.7, 2)
    comps.append(("ring", np.array([cx, cy, rng.uniform(0.12, 0.3), 0.035]), rng.uniform(0.6, 1.0)))
    cx, cy = rng.uniform(0.3, 0.7, 2)
    gabor = np.array([cx, cy, rng.uniform(2.0, 6.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)])
    comps.append(("gabor", gabor, rng.uniform(0.5, 0.9)))
    return comps


def _render(comps: list[tuple[str, np.ndarray, float]], colours: np.ndarray, size: int) -> np.ndarray:
    """Picture as (H, W, C) float32 with max |value| 1; colours is (n_components, C)."""
    grid = (np.arange(size, dtype=np.float64) + 0.5) / size
    u, v = np.meshgrid(grid, grid, indexing="xy")
    out = np.zeros((size, size, colours.shape[1]))
    for (kind, p, weight), colour in zip(comps, colours, strict=True):
        d2 = (u - p[0]) ** 2 + (v - p[1]) ** 2
        if kind == "blob":
            field = np.exp(-d2 / (2 * p[2] ** 2))
        elif kind == "ring":
            field = np.exp(-(((np.sqrt(d2) - p[2]) / p[3]) ** 2))
        else:  # gabor: grating of p[2] cycles per image at angle p[3], Gaussian envelope
            phase = 2 * np.pi * p[2] * (u * np.cos(p[3]) + v * np.sin(p[3])) + p[4]
            field = np.cos(phase) * np.exp(-d2 / (2 * 0.18**2))
        out += weight * field[..., None] * colour
    return (out / max(np.abs(out).max(), 1e-8)).astype(np.float32)


@lru_cache(maxsize=8)
def _patterns(flag: str, size: int, seed: int) -> np.ndarray:
    """(L + nuisance, H*W*C) pictures: one per label, then the shared nuisance ones."""
    info = task_info(flag)
    rng = _rng(seed, flag, "patterns")
    c = info.n_channels

    def picture() -> np.ndarray:
        comps = _component_params(rng)
        colours = 0.3 + 2.1 * rng.dirichlet(np.ones(c), size=len(comps)) if c == 3 else np.ones((len(comps), 1))
        return _render(comps, colours, size)

    labels = [picture() for _ in range(info.n_outputs)]
    if info.task_type == "ordinal-regression":  # grade g = shared lesion * g/(L-1) + its own picture
        lesion = picture()
        labels = [0.5 * own + lesion * g / max(info.n_outputs - 1, 1) for g, own in enumerate(labels)]
    nuisance = [picture() for _ in range(_N_NUISANCE)]
    return np.stack([p.reshape(-1) for p in labels + nuisance])


def _base_colour(flag: str, n_channels: int, seed: int) -> np.ndarray:
    """Background gray level, tinted per flag for RGB tasks (stain / dermoscopy colour)."""
    tint = _rng(seed, flag, "tint").uniform(-25, 25, size=n_channels) if n_channels == 3 else np.zeros(1)
    return (_BASE_GRAY + tint).astype(np.float32)


# images ---------------------------------------------------------------------------------------


def synthetic_images(flag: str, size: int, split: str, ids: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Images of samples `ids` of a synthetic split, given their labels (rows of synthetic_labels).

    Row i depends only on (flag, size, split, seed, ids[i], labels[i]), so subsets match the full split.
    """
    info = task_info(flag)
    if size not in SIZES:
        raise ValueError(f"unknown MedMNIST size {size!r}; valid sizes: {SIZES}")
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels).reshape(len(ids), -1)
    n_labels = info.n_outputs
    if info.multi_label:
        active = labels.astype(np.float32)
    else:
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= n_labels:
            raise ValueError(f"{flag} labels must lie in [0, {n_labels}), got {labels.min()}..{labels.max()}")
        active = np.eye(n_labels, dtype=np.float32)[labels[:, 0]]

    patterns = _patterns(flag, size, seed)
    c = info.n_channels
    pixels = size * size * c
    base = _base_colour(flag, c, seed)
    offsets = np.rint(np.linspace(-1.0, 1.0, 5) * max(2, round(_JITTER * size))).astype(np.int64)
    pixel_streams = np.arange(pixels, dtype=np.uint32) * np.uint32(0x9E3779B9)
    out = np.empty((len(ids), size, size, c), dtype=np.uint8)
    rows = max(1, _CHUNK_ELEMENTS // pixels)
    for start in range(0, len(ids), rows):
        sl = slice(start, start + rows)
        keys = _sample_keys(flag, split, seed, ids[sl])
        u = _sample_uniforms(keys, n_labels + _N_NUISANCE + 3)
        # mix: label pictures at a random amplitude, nuisance pictures at a random signed weight
        low, high = _AMPLITUDE
        coef = np.concatenate(
            [
                active[sl] * (low + (high - low) * u[:, :n_labels]),
                _NUISANCE * (2.0 * u[:, n_labels : n_labels + _N_NUISANCE] - 1.0),
            ],
            axis=1,
        )
        field = (coef @ patterns).reshape(-1, size, size, c)
        # shift: one of 5x5 offsets up to +-jitter pixels
        shift = (u[:, -3] * 25).astype(np.int64)
        for s in np.unique(shift):
            m = shift == s
            field[m] = np.roll(field[m], (int(offsets[s // 5]), int(offsets[s % 5])), axis=(1, 2))
        # brightness per sample (less _NOISE: the noise below lies in [0, 2 * _NOISE)), then pixel noise
        img = field
        img *= _CONTRAST
        img += (base - _NOISE + 30.0 * (u[:, -2:-1] - 0.5))[:, None, None, :]
        noise = _to_unit(_mix32(keys[:, None] ^ pixel_streams[None, :])).reshape(img.shape)
        noise *= 2.0 * _NOISE
        img += noise
        np.clip(img, 0, 255, out=img)
        np.rint(img, out=img)
        out[sl] = img
    return out[..., 0] if c == 1 else out


def synthetic_task(flag: str, size: int = 28, seed: int = 0) -> dict[str, SplitArrays]:
    """All three splits of a synthetic task with the official split sizes, channels and label shape."""
    splits = {}
    for split in SPLITS:
        labels = synthetic_labels(flag, split, seed)
        images = synthetic_images(flag, size, split, np.arange(len(labels)), labels, seed)
        splits[split] = SplitArrays(images=images, labels=labels)
    return splits


# site shift -----------------------------------------------------------------------------------


def apply_site_shift(images: np.ndarray, hospital_id: int, seed: int, strength: float = 1.0) -> np.ndarray:
    """The same images as if acquired at hospital `hospital_id`: its own scanner / stain look.

    Gamma, contrast and brightness (plus a colour cast on RGB) via a per-channel lookup table, then
    the site's noise level. Deterministic in (hospital_id, seed, strength); strength 0 is identity.
    """
    if strength < 0:
        raise ValueError(f"site shift strength must be >= 0, got {strength}")
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"apply_site_shift expects uint8 images, got {images.dtype}")
    if strength == 0:
        return images.copy()
    rng = _rng(seed, "site", int(hospital_id))
    c = 3 if images.ndim == 4 else 1
    gamma = np.exp(strength * rng.uniform(-0.35, 0.35))
    contrast = 1.0 + strength * rng.uniform(-0.25, 0.25)
    brightness = strength * rng.uniform(-20, 20)
    gain = 1.0 + strength * rng.uniform(-0.08, 0.08, size=c) if c == 3 else np.ones(1)
    noise = int(round(strength * rng.uniform(0, 6)))
    # tone curve per channel
    x = np.arange(256) / 255.0
    curve = ((x**gamma - 0.5) * contrast + 0.5) * 255.0
    luts = np.clip(np.rint(curve[None, :] * gain[:, None] + brightness), 0, 255).astype(np.uint8)
    if c == 1:
        out = luts[0][images]
    else:
        out = np.empty_like(images)
        for ch in range(3):
            out[..., ch] = luts[ch][images[..., ch]]
    # acquisition noise, in chunks to bound memory
    if noise > 0 and out.size:
        flat = out.reshape(len(out), -1)
        rows = max(1, _CHUNK_ELEMENTS // flat.shape[1])
        for start in range(0, len(flat), rows):
            block = flat[start : start + rows].astype(np.int16)
            block += rng.integers(-noise, noise + 1, size=block.shape, dtype=np.int16)
            flat[start : start + rows] = np.clip(block, 0, 255).astype(np.uint8)
    return out


def write_npz(path: str | os.PathLike, splits: dict[str, SplitArrays]) -> None:
    """Write splits as a MedMNIST file (`train_images`, ..., `test_labels`; labels uint8 (N, L))."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"MedMNIST files end in .npz (e.g. breastmnist.npz), got {path!r}")
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ValueError(f"write_npz needs splits {SPLITS}, missing {missing}")
    arrays = {}
    for split in SPLITS:
        arrays[f"{split}_images"] = splits[split].images
        labels = splits[split].labels
        arrays[f"{split}_labels"] = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels
    np.savez(path, **arrays)
