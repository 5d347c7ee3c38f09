"""Data sets as arrays: Fashion-MNIST (IDX files), procedural shapes, ``.npz`` files, image folders.

A :class:`Dataset` holds the samples of one split as ``x`` ``(N, C, H, W)`` (``uint8`` images,
scaled by 1/255 when batched, or ``float32`` used as they are) and ``y``: ``(N,)`` class indices
for classification, ``(N, H, W)`` class indices per pixel for segmentation.
:func:`load_dataset` resolves a ``[training] dataset`` value to a ``(train, test)`` pair.

Missing or corrupt files raise :class:`~declcnn.errors.DataError` naming the file and what to do.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .archives import MAX_DEFLATE_RATIO, check_regular_file, read_npy, read_npz

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SYSTEM_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "data"
HOW_TO_GET_FASHION = (
    "for the full set (60,000 training and 10,000 test images) install the Debian package "
    "dataset-fashion-mnist, or put the four IDX files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a "
    "folder and pass --data DIR or set DECLCNN_DATA=DIR"
)
SHAPE_CLASSES = ("background", "circle", "square", "triangle")
# The full Fashion-MNIST training images are 47 MB; a file declaring more than this is refused.
MAX_IDX_BYTES = 1 << 30
MAX_NPZ_BYTES = 1 << 30  # CIFAR-10 as bytes is 180 MB
MAX_IMAGE_PIXELS = 1 << 26  # 8192 × 8192: far above any input, below PIL's bomb limit
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# IDX type codes (the third magic byte) and their big-endian numpy types.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(t).newbyteorder("="): code for code, t in _IDX_TYPES.items()}


@dataclass
class Dataset:
    """One split: ``x`` ``(N, C, H, W)``, ``y`` ``(N,)`` or ``(N, H, W)`` class indices."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    name: str
    description: str = ""
    notes: list[str] = field(default_factory=list)
    splits: dict[str, Dataset] = field(default_factory=dict)  # named ones besides train, test

    def __len__(self) -> int:
        return len(self.x)

    @property
    def segmentation(self) -> bool:
        return self.y.ndim == 3


# -- IDX ------------------------------------------------------------------------------------

def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw, or gzip-compressed whatever its name) into a native-order array.

    The header's declared size is checked against :data:`MAX_IDX_BYTES` and against the file
    (its exact size, or what its gzip stream can hold at deflate's best ratio) before the data
    is read, and no more than it declares is ever inflated.
    """
    path = Path(path)
    size = check_regular_file(path, DataError)
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
        with (gzip.open if compressed else open)(path, "rb") as handle:
            start = handle.read(4)
            if len(start) < 4 or start[0] != 0 or start[1] != 0 or start[2] not in _IDX_TYPES:
                raise DataError(f"{path}: not an IDX file (the first bytes are "
                                f"{start.hex(' ')}, expected 00 00 <type> <rank>); check that it "
                                f"is one of the data set's IDX files and download it again.")
            dtype, rank = np.dtype(_IDX_TYPES[start[2]]), start[3]
            header = 4 + 4 * rank
            dims = handle.read(4 * rank)
            if len(dims) < 4 * rank:
                raise DataError(f"{path}: the IDX header is truncated ({4 + len(dims)} bytes for "
                                f"a rank-{rank} header of {header}); download the file again.")
            shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
            expected = header + dtype.itemsize * math.prod(shape)
            if expected > MAX_IDX_BYTES:
                raise DataError(f"{path}: the header declares shape {shape} ({expected:,} bytes), "
                                f"more than the {MAX_IDX_BYTES:,} an IDX file may hold here; it "
                                f"is corrupt or crafted, download it again.")
            if compressed and expected > MAX_DEFLATE_RATIO * size + (1 << 16):
                raise DataError(f"{path}: the header declares shape {shape} ({expected:,} bytes) "
                                f"but {size:,} compressed bytes cannot hold that much; the file "
                                f"is corrupt or crafted, download it again.")
            body = handle.read(expected - header + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file.") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: the gzip stream is corrupt or truncated ({err}); download the "
                        f"file again.") from None
    if header + len(body) != expected:
        held = header + len(body) if compressed or header + len(body) < expected else size
        more = " or more" if held > expected and compressed else ""
        raise DataError(f"{path}: the header promises shape {shape} ({expected} bytes in all) but "
                        f"the file holds {held} bytes{more}; it is truncated or corrupt, download "
                        f"it again.")
    array = np.frombuffer(body, dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` as IDX; gzip-compressed (reproducibly, no time stamp) if ``path`` ends in
    ``.gz``."""
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"{path}: IDX cannot store {array.dtype}; use uint8, int8, int16, "
                        f"int32, float32 or float64.")
    data = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + array.astype(_IDX_TYPES[code]).tobytes())
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    Path(path).write_bytes(data)


# -- Fashion-MNIST ---------------------------------------------------------------------------

def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_complete(folder: Path) -> bool:
    return all(_idx_file(folder, stem) for pair in FASHION_FILES.values() for stem in pair)


def find_fashion_mnist(data_dir=None) -> tuple[Path, bool]:
    """The folder of the Fashion-MNIST IDX files and whether it is the embedded subset.

    Order: ``data_dir`` (``--data``), ``$DECLCNN_DATA``, the Debian package's folder, the subset
    shipped in ``declcnn/data``.  A folder given explicitly must hold the files.
    """
    explicit = [(data_dir, "--data")] if data_dir else []
    if os.environ.get("DECLCNN_DATA"):
        explicit.append((os.environ["DECLCNN_DATA"], "DECLCNN_DATA"))
    if explicit:
        folder, origin = Path(explicit[0][0]).expanduser(), explicit[0][1]
        for candidate in (folder, folder / "fashion-mnist"):
            if candidate.is_dir() and _fashion_complete(candidate):
                return candidate, False
        missing = [s for pair in FASHION_FILES.values() for s in pair
                   if not (folder.is_dir() and _idx_file(folder, s))]
        raise DataError(f"{origin} {folder}: Fashion-MNIST needs the IDX files "
                        f"{', '.join(m + '[.gz]' for m in missing)} there"
                        f"{'' if folder.is_dir() else ' (the folder does not exist)'}; "
                        f"{HOW_TO_GET_FASHION}.")
    system = Path(SYSTEM_FASHION_DIR)
    if _fashion_complete(system):
        return system, False
    return EMBEDDED_DIR, True


def load_fashion_mnist(data_dir=None) -> tuple[Dataset, Dataset]:
    folder, embedded = find_fashion_mnist(data_dir)
    splits = []
    for split, (images_stem, labels_stem) in FASHION_FILES.items():
        if embedded:
            images_path = EMBEDDED_DIR / f"fashion-mnist-subset-{images_stem}.gz"
            labels_path = EMBEDDED_DIR / f"fashion-mnist-subset-{labels_stem}.gz"
        else:
            images_path = _idx_file(folder, images_stem)
            labels_path = _idx_file(folder, labels_stem)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{images_path} and {labels_path}: expected N×28×28 images and N "
                            f"labels; got shapes {images.shape} and {labels.shape}. The files do "
                            f"not belong together; download them again.")
        if labels.size and labels.max() >= len(FASHION_CLASSES):
            raise DataError(f"{labels_path}: label {int(labels.max())} is not a Fashion-MNIST "
                            f"class (0-9); the file is corrupt, download it again.")
        source = "embedded Fashion-MNIST subset" if embedded else f"Fashion-MNIST from {folder}"
        splits.append(Dataset(images[:, None].astype(np.uint8), labels.astype(np.int64),
                              FASHION_CLASSES, "fashion-mnist",
                              f"{source}: {len(images)} {split} images"))
    if embedded:
        splits[0].notes.append(f"using the embedded Fashion-MNIST subset ({len(splits[0])} "
                               f"training, {len(splits[1])} test images); {HOW_TO_GET_FASHION}.")
    return splits[0], splits[1]


# -- procedural shapes -------------------------------------------------------------------------

def make_shapes(n: int, size: tuple[int, int], channels: int = 1, seed: int = 0,
                max_shapes: int = 3) -> Dataset:
    """``n`` images of 1..``max_shapes`` filled circles, squares and triangles on a noisy
    background, and their masks (0 background, 1 circle, 2 square, 3 triangle); a later shape
    covers an earlier one.  A pure function of its arguments.

    Each shape's brightness is drawn from the same range whatever its class, so the class can
    only be told from the outline.  Shape: ``x`` ``(n, channels, H, W)`` uint8, ``y`` ``(n, H, W)``.
    """
    height, width = size
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    base = rng.uniform(10, 70, (n, 1, 1)).astype(np.float32)
    image = base + rng.normal(0, 8, (n, height, width)).astype(np.float32)
    mask = np.zeros((n, height, width), np.int64)
    scale = min(height, width)
    for i in range(n):
        for _ in range(rng.integers(1, max_shapes + 1)):
            kind = int(rng.integers(1, 4))
            radius = rng.uniform(0.10, 0.22) * scale
            cy, cx = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
            dy, dx = rows - cy, cols - cx
            if kind == 1:
                inside = dy * dy + dx * dx <= radius * radius
            elif kind == 2:
                inside = np.maximum(np.abs(dy), np.abs(dx)) <= radius * 0.85
            else:
                # An upright triangle: below the apex and above the base, within two slanted
                # edges whose half-width grows linearly from the apex.
                depth = dy + radius
                inside = (depth >= 0) & (dy <= radius * 0.7) & (np.abs(dx) <= depth * 0.65)
            mask[i][inside] = kind
            image[i][inside] = rng.uniform(140, 250) + rng.normal(0, 8, int(inside.sum()))
    x = np.clip(image, 0, 255).astype(np.uint8)[:, None]
    x = np.repeat(x, channels, axis=1)
    return Dataset(x, mask, SHAPE_CLASSES, "shapes",
                   f"procedural shapes: {n} images {height}×{width}, seed {seed}")


def load_shapes(input_shape, seed: int = 0, n_train: int | None = None,
                n_test: int | None = None) -> tuple[Dataset, Dataset]:
    """Training and held-out shape sets at the network's input size (held-out: another seed).

    By default 2000 and 400 images up to 64×64, fewer above (as many pixels as 2000 of 64×64,
    at least 100 images), so a large input (U-Net's) does not need gigabytes."""
    channels, height, width = _image_shape(input_shape, "shapes")
    if n_train is None:
        n_train = min(2000, max(100, round(2000 * 64 * 64 / (height * width))))
    n_test = n_train // 5 if n_test is None else n_test
    train = make_shapes(n_train, (height, width), channels, seed=seed)
    test = make_shapes(n_test, (height, width), channels, seed=seed + 1_000_003)
    return train, test


def load_shape_classes(input_shape, seed: int = 0, n_train: int | None = None,
                       n_test: int | None = None) -> tuple[Dataset, Dataset]:
    """One shape per image, its class the label (circle, square, triangle): a classification
    set generated at any input size and channel count (held-out: another seed).  By default
    1200 and 300 images up to 64×64, fewer above (as many pixels, at least 200 images)."""
    channels, height, width = _image_shape(input_shape, "shape-classes")
    if n_train is None:
        n_train = min(1200, max(200, round(1200 * 64 * 64 / (height * width))))
    n_test = n_train // 4 if n_test is None else n_test
    splits = []
    for n, offset in ((n_train, 0), (n_test, 1_000_003)):
        shapes = make_shapes(n, (height, width), channels, seed=seed + offset, max_shapes=1)
        labels = shapes.y.reshape(n, -1).max(axis=1) - 1
        if (labels < 0).any():
            raise DataError(f"data set 'shape-classes': at {height}×{width} some shapes cover "
                            f"no pixel; train at 16×16 or more (--input 32x32).")
        splits.append(Dataset(shapes.x, labels, SHAPE_CLASSES[1:], "shape-classes",
                              f"procedural shape classes: {n} images {height}×{width}, seed "
                              f"{seed + offset}"))
    return splits[0], splits[1]


# -- .npz and image folders ---------------------------------------------------------------------

def _image_shape(input_shape, what: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise DataError(f"data set '{what}' holds images, but the network's input is "
                        f"{tuple(input_shape)}; give the spec an input of (channels, height, "
                        f"width).")
    return tuple(int(s) for s in input_shape)


def _holdout(x: np.ndarray, y: np.ndarray, seed: int, fraction: float = 0.1):
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * fraction)))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def _npz_images(path: Path, key: str, x, input_shape) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < len(input_shape):
        raise DataError(f"{path}: array '{key}' has shape {x.shape}; store it as (N, "
                        f"{', '.join(map(str, input_shape))}).")
    if x.ndim == len(input_shape):  # one channel without its axis
        x = x[:, None]
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"{path}: array '{key}' has samples of shape {tuple(x.shape[1:])} but the "
                        f"network's input is {tuple(input_shape)}; store '{key}' as (N, "
                        f"{', '.join(map(str, input_shape))}) or change the spec's input.")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DataError(f"{path}: array '{key}' is {x.dtype}, not real numbers; store numbers.")
    return np.ascontiguousarray(x, dtype=np.float32)


def _npz_labels(path: Path, key: str, y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != n:
        raise DataError(f"{path}: array '{key}' has {len(y)} entries for {n} samples; give one "
                        f"label (or mask) per sample.")
    if np.issubdtype(y.dtype, np.floating):
        if not np.array_equal(y, np.round(y)):
            raise DataError(f"{path}: array '{key}' holds fractional values; labels must be class "
                            f"indices 0, 1, 2, ...")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: array '{key}' is {y.dtype}; labels must be integers.")
    return y.astype(np.int64)


def from_arrays(x, y, input_shape, what: str = "arrays", classes=None) -> Dataset:
    """A :class:`Dataset` of numpy arrays (``Trainer.fit(x, y)``): ``x`` ``(N, C, H, W)`` (or
    ``(N, H, W)`` for one channel), ``uint8`` or numbers; ``y`` class indices per sample or
    per pixel; checked as an ``.npz``'s arrays are."""
    images = _npz_images(what, "x", x, input_shape)
    labels = _npz_labels(what, "y", y, len(images))
    if classes is None:
        classes = tuple(str(i) for i in range(int(labels.max(initial=0)) + 1))
    return Dataset(images, labels, tuple(str(c) for c in classes), what,
                   f"{what}: {len(images)} samples")


def load_npz(path, input_shape, seed: int = 0) -> tuple[Dataset, Dataset]:
    """An ``.npz`` with ``x`` and ``y`` (and optionally ``x_test``, ``y_test``; otherwise 10% of
    the samples, chosen by ``seed``, are held out).  Optional ``classes``: the class names."""
    path = Path(path)
    arrays = read_npz(path, MAX_NPZ_BYTES, DataError,
                      "Save it with numpy.savez(path, x=images, y=labels)")
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: the archive lacks {' and '.join(repr(k) for k in missing)} (it "
                        f"has {sorted(arrays) or 'nothing'}); save it with numpy.savez(path, "
                        f"x=images, y=labels).")
    x = _npz_images(path, "x", arrays["x"], input_shape)
    y = _npz_labels(path, "y", arrays["y"], len(x))
    held_out = "x_test" in arrays and "y_test" in arrays
    if len(x) < (1 if held_out else 2):
        need = "one sample" if held_out else "two samples (one is held out for testing)"
        raise DataError(f"{path}: array 'x' has {len(x)} samples; training needs at least "
                        f"{need}. Add samples{'' if held_out else ', or x_test and y_test'}.")
    if held_out:
        x_test = _npz_images(path, "x_test", arrays["x_test"], input_shape)
        if not len(x_test):
            raise DataError(f"{path}: array 'x_test' has no samples; add some, or leave x_test "
                            f"and y_test out to hold out 10% of x.")
        (train_x, train_y), (test_x, test_y) = (x, y), (
            x_test, _npz_labels(path, "y_test", arrays["y_test"], len(x_test)))
    else:
        (train_x, train_y), (test_x, test_y) = _holdout(x, y, seed)
    n_classes = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
    names = arrays.get("classes")
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "US"
                              or len(names) < n_classes):
        raise DataError(f"{path}: array 'classes' must list the {n_classes} class names as "
                        f"strings; it is {names.dtype} of shape {names.shape}. Store "
                        f"classes=numpy.array(['cat', 'dog', ...]) or leave it out.")
    classes = (tuple(str(c) for c in names) if names is not None
               else tuple(str(i) for i in range(n_classes)))
    splits = {}
    for key in sorted(arrays):  # x_val and y_val (any x_NAME, y_NAME but test): a named split
        name = key[2:]
        if key.startswith("x_") and name != "test" and f"y_{name}" in arrays:
            x_split = _npz_images(path, key, arrays[key], input_shape)
            splits[name] = Dataset(x_split, _npz_labels(path, f"y_{name}", arrays[f"y_{name}"],
                                                        len(x_split)),
                                   classes, path.name, f"{path}: {len(x_split)} '{name}' samples")
    return (Dataset(train_x, train_y, classes, path.name, f"{path}: {len(train_x)} samples",
                    splits=splits),
            Dataset(test_x, test_y, classes, path.name, f"{path}: {len(test_x)} held-out samples"))


def read_image(path, input_shape) -> np.ndarray:
    """One image file as ``uint8`` ``(C, H, W)``: converted to grey or RGB and resized (bilinear)
    to the network's input."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = _image_shape(input_shape, str(path))
    if channels not in (1, 3):
        raise DataError(f"{path}: the network takes {channels}-channel input; image files can "
                        f"only give 1 (grey) or 3 (RGB). Convert the images to a .npz or .npy.")
    check_regular_file(path, DataError, "image file")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise DataError(f"{path}: the image is {image.width}×{image.height} pixels, more "
                                f"than the {MAX_IMAGE_PIXELS:,} an input may have; shrink it "
                                f"first.")
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file.") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError, EOFError) as err:  # PIL's plugins raise all of these on bad files
        raise DataError(f"{path}: not a readable image ({err}); replace or remove it.") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def read_input(path, input_shape) -> tuple[np.ndarray, tuple]:
    """One input for ``predict`` and the shape it was stored in: an image file (resized to the
    network's input) or an ``.npy`` array with the network's channels, ``uint8`` or finite
    ``float32``, kept at its own height and width (the network may run at another size: the
    caller checks); anything else is refused with a message."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        return read_image(path, input_shape), tuple(input_shape)
    array = read_npy(path, MAX_NPZ_BYTES, DataError,
                     "Save the input with numpy.save(path, array)")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: the array is {array.dtype}, not real numbers; save a uint8 "
                        f"image or a float array.")
    stored = array.shape
    if array.ndim == len(input_shape) - 1 and input_shape[0] == 1:
        array = array[None]  # a grey image without its channel axis
    if array.ndim != len(input_shape) or array.shape[0] != input_shape[0] or (
            len(input_shape) == 1 and tuple(array.shape) != tuple(input_shape)):
        raise DataError(f"{path}: the array has shape {stored} but the network takes "
                        f"{tuple(input_shape)}; save it in that shape (an image file would be "
                        f"resized instead).")
    if array.dtype == np.uint8:
        return array, stored
    with np.errstate(over="ignore"):  # what overflows float32 is reported just below
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise DataError(f"{path}: the array holds {bad} NaN or infinite value(s) (as float32); "
                        f"predictions on them would be NaN. Replace them with finite values.")
    return array, stored


def _read_class_folders(root: Path, input_shape) -> tuple[np.ndarray, np.ndarray, tuple]:
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{root}: no class folders; put the images of each class in a folder "
                        f"named after it (e.g. {root}/cat/1.png).")
    images, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images += [read_image(f, input_shape) for f in files]
        labels += [index] * len(files)
    if not images:
        raise DataError(f"{root}: the class folders {list(classes)} hold no images "
                        f"({', '.join(IMAGE_SUFFIXES)}).")
    return np.stack(images), np.asarray(labels, np.int64), classes


def load_image_folder(root, input_shape, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A folder with one sub-folder of images per class, or ``train/`` and ``test/`` folders that
    each hold them; without a ``test/`` folder 10% of the images (chosen by ``seed``) are held
    out."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder.")
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = _read_class_folders(root / "train", input_shape)
        x_test, y_test, test_classes = _read_class_folders(root / "test", input_shape)
        if test_classes != classes:
            raise DataError(f"{root}: train/ has the classes {list(classes)} but test/ has "
                            f"{list(test_classes)}; give both the same class folders.")
    else:
        x, y, classes = _read_class_folders(root, input_shape)
        (x, y), (x_test, y_test) = _holdout(x, y, seed)
    return (Dataset(x, y, classes, root.name, f"{root}: {len(x)} images"),
            Dataset(x_test, y_test, classes, root.name, f"{root}: {len(x_test)} held-out images"))


def load_dataset(dataset: str, input_shape, data_dir=None, seed: int = 0,
                 fix=None) -> tuple[Dataset, Dataset]:
    """``(train, test)`` for a ``[training] dataset`` value; ``data_dir`` (``--data``), when
    given, replaces it whatever it names: any of :data:`DATA_FORMATS`, detected (and the choice
    noted in ``train.notes``).  ``fix(images_shape)``, when given, says how to make the spec fit
    images of another shape (the caller knows the network; this module does not)."""
    if data_dir:
        classes = FASHION_CLASSES if dataset == "fashion-mnist" else None
        train, test, what = load_path(data_dir, input_shape, seed, classes, fix)
        train.notes.insert(0, what)
        return train, test
    if dataset == "fashion-mnist":
        train, test = load_fashion_mnist(data_dir)
        if tuple(input_shape) != (1, 28, 28):
            raise DataError(f"Fashion-MNIST images are (1, 28, 28) but the network's input is "
                            f"{tuple(input_shape)}; "
                            f"{fix((1, 28, 28)) if fix else 'set the spec input to [1, 28, 28]'}.")
        return train, test
    if dataset == "shapes":
        return load_shapes(input_shape, seed=seed)
    if dataset == "shapes-foreground":  # two classes: background, and any shape
        train, test = load_shapes(input_shape, seed=seed)
        for split in (train, test):
            split.y = (split.y > 0).astype(np.int64)
            split.classes, split.name = ("background", "shape"), "shapes-foreground"
            split.description = split.description.replace("shapes", "shapes (foreground)", 1)
        return train, test
    if dataset == "shape-classes":
        return load_shape_classes(input_shape, seed=seed)
    path = Path(dataset)
    if path.is_dir():
        return load_image_folder(path, input_shape, seed)
    if path.suffix == ".npz" or path.is_file():
        return load_npz(path, input_shape, seed)
    raise DataError(f"{path}: no such file or folder; give an .npz with arrays x and y, or a "
                    f"folder with one sub-folder of images per class.")


# -- any path (--data): the format detected from what is there ---------------------------------

DATA_FORMATS = (
    "an IDX folder (MNIST or Fashion-MNIST files: train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not, "
    "any common prefix)",
    "a CIFAR-10 binary folder (data_batch_1.bin … data_batch_5.bin, test_batch.bin, "
    "batches.meta.txt)",
    "an image folder (one sub-folder of images per class, optionally under train/ and test/)",
    "an .npz archive (arrays x and y; optional x_test, y_test, classes)",
)
CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")
_CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue 32×32 planes
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def _idx_files(folder: Path) -> dict[str, Path]:
    """The IDX files of a folder by stem: ``NAME`` or ``NAME.gz``, after any prefix (the
    embedded subset's ``fashion-mnist-subset-``)."""
    found = {}
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    for stem in (s for pair in FASHION_FILES.values() for s in pair):
        matches = [n for n in names if n.endswith((stem, stem + ".gz"))]
        if matches:  # prefer the shortest name (no prefix), then the uncompressed one
            found[stem] = folder / min(matches, key=lambda n: (len(n.removesuffix(".gz")),
                                                              n.endswith(".gz")))
    return found


def _formats_text() -> str:
    return "; ".join(DATA_FORMATS)


def detect_format(path) -> tuple[str, Path]:
    """``(format, where)`` for ``--data PATH``: ``"idx"``, ``"cifar10"``, ``"image-folder"`` or
    ``"npz"``, and the folder or file that holds it (``PATH``, or the data set's usual sub-folder
    of it: ``fashion-mnist/``, ``mnist/``, ``cifar-10-batches-bin/``)."""
    path = Path(path).expanduser()
    if path.is_file():
        with path.open("rb") as handle:
            magic = handle.read(4)
        if path.suffix.lower() == ".npz" or magic == b"PK\x03\x04":
            return "npz", path
        raise DataError(f"--data {path}: a file that is not an .npz archive; --data takes "
                        f"{_formats_text()}.")
    if not path.is_dir():
        raise DataError(f"--data {path}: no such file or folder; --data takes {_formats_text()}.")
    for folder in (path, path / "fashion-mnist", path / "mnist", path / "cifar-10-batches-bin"):
        if not folder.is_dir():
            continue
        if _idx_files(folder):
            return "idx", folder
        if any((folder / name).is_file() for name in CIFAR_FILES):
            return "cifar10", folder
        if (folder / "data_batch_1").is_file():
            raise DataError(f"--data {folder}: this is CIFAR-10's pickled Python version, which "
                            f"declcnn does not read (unpickling runs code); download the binary "
                            f"version (cifar-10-binary.tar.gz, data_batch_1.bin …) instead.")
    if any(p.is_dir() for p in path.iterdir()):
        return "image-folder", path
    raise DataError(f"--data {path}: found no data set there; --data takes {_formats_text()}.")


def _check_images(path, shape: tuple, input_shape, fix=None) -> None:
    """Refuse images of ``shape`` (C, H, W) that are not the network's input; ``fix(shape)``
    says how to make the spec fit them."""
    if tuple(shape) != tuple(input_shape):
        how = fix(tuple(shape)) if fix else f"set the spec's input to {list(shape)}"
        raise DataError(f"{path}: the images are {tuple(shape)} but the network's input is "
                        f"{tuple(input_shape)}; {how}.")


def load_idx_folder(folder, input_shape, classes=None, fix=None) -> tuple[Dataset, Dataset]:
    """MNIST-style IDX files (see :data:`DATA_FORMATS`) as ``(train, test)``; class names are
    ``classes``, Fashion-MNIST's when a file or folder name says "fashion", else the digits."""
    folder = Path(folder)
    files = _idx_files(folder)
    missing = [s for pair in FASHION_FILES.values() for s in pair if s not in files]
    if missing:
        raise DataError(f"{folder}: an IDX data set needs the files "
                        f"{', '.join(m + '[.gz]' for m in missing)} there too; "
                        f"{HOW_TO_GET_FASHION}.")
    if classes is None:
        fashion = "fashion" in str(folder).lower() or any("fashion" in p.name for p in
                                                          files.values())
        classes = FASHION_CLASSES if fashion else DIGIT_CLASSES
    splits = []
    for split, (images_stem, labels_stem) in FASHION_FILES.items():
        images_path, labels_path = files[images_stem], files[labels_stem]
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{images_path} and {labels_path}: expected N×H×W images and N "
                            f"labels; got shapes {images.shape} and {labels.shape}. The files do "
                            f"not belong together; download them again.")
        _check_images(images_path, (1, *images.shape[1:]), input_shape, fix)
        if labels.size and labels.max() >= len(classes):
            raise DataError(f"{labels_path}: label {int(labels.max())} is beyond the "
                            f"{len(classes)} classes (0-{len(classes) - 1}); the file is corrupt "
                            f"or of another data set.")
        splits.append(Dataset(images[:, None].astype(np.uint8, copy=False),
                              labels.astype(np.int64), tuple(classes), folder.name,
                              f"IDX files in {folder}: {len(images)} {split} images"))
    return splits[0], splits[1]


def _cifar_records(path: Path) -> int:
    size = path.stat().st_size
    if size == 0 or size % _CIFAR_RECORD:
        raise DataError(f"{path}: {size} bytes is not a whole number of CIFAR-10 records "
                        f"({_CIFAR_RECORD} bytes each: a label byte and 3×32×32 pixels); the "
                        f"file is truncated or not CIFAR-10's binary version, download it again.")
    return size // _CIFAR_RECORD


def _read_cifar(paths: list[Path], classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The records of ``paths`` into one array: sizes are checked first, then each file is
    read straight into its rows (one copy of the images in memory, not several)."""
    counts = [_cifar_records(p) for p in paths]
    x = np.empty((sum(counts), 3, 32, 32), np.uint8)
    y = np.empty(sum(counts), np.int64)
    start = 0
    for path, count in zip(paths, counts, strict=True):
        records = np.fromfile(path, np.uint8).reshape(count, _CIFAR_RECORD)
        if records[:, 0].max() >= classes:
            raise DataError(f"{path}: label {int(records[:, 0].max())} is beyond the {classes} "
                            f"classes of batches.meta.txt; the file is corrupt, or CIFAR-100's "
                            f"(whose records are longer), download CIFAR-10 again.")
        x[start:start + count] = records[:, 1:].reshape(count, 3, 32, 32)
        y[start:start + count] = records[:, 0]
        start += count
    return x, y


def load_cifar10(folder, input_shape, fix=None) -> tuple[Dataset, Dataset]:
    """CIFAR-10's binary version: ``data_batch_1..5.bin`` for training (those present),
    ``test_batch.bin`` for the test, class names from ``batches.meta.txt`` when there."""
    folder = Path(folder)
    _check_images(folder, (3, 32, 32), input_shape, fix)
    meta = folder / "batches.meta.txt"
    classes = CIFAR_CLASSES
    if meta.is_file():
        names = tuple(line.strip() for line in meta.read_text().splitlines() if line.strip())
        classes = names or classes
    train_files = [folder / n for n in CIFAR_FILES[:-1] if (folder / n).is_file()]
    test_file = folder / CIFAR_FILES[-1]
    if not train_files or not test_file.is_file():
        missing = "data_batch_1.bin … data_batch_5.bin" if not train_files else test_file.name
        raise DataError(f"{folder}: CIFAR-10 needs {missing} there; download the binary version "
                        f"(cifar-10-binary.tar.gz) and unpack it.")
    x, y = _read_cifar(train_files, len(classes))
    x_test, y_test = _read_cifar([test_file], len(classes))
    return (Dataset(x, y, classes, "cifar10",
                    f"CIFAR-10 from {folder}: {len(x)} training images"),
            Dataset(x_test, y_test, classes, "cifar10",
                    f"CIFAR-10 from {folder}: {len(x_test)} test images"))


FORMAT_NAMES = {"idx": "IDX folder", "cifar10": "CIFAR-10 binary", "image-folder":
                "image folder", "npz": ".npz archive"}


def load_path(path, input_shape, seed: int = 0, classes=None,
              fix=None) -> tuple[Dataset, Dataset, str]:
    """``(train, test, what)`` for ``--data PATH`` in any of :data:`DATA_FORMATS`; ``what``
    says which format was detected where, for the user."""
    kind, where = detect_format(path)
    if kind == "idx":
        train, test = load_idx_folder(where, input_shape, classes, fix)
    elif kind == "cifar10":
        train, test = load_cifar10(where, input_shape, fix)
    elif kind == "image-folder":
        train, test = load_image_folder(where, input_shape, seed)
    else:
        train, test = load_npz(where, input_shape, seed)
    return train, test, f"--data {path}: read as {FORMAT_NAMES[kind]} ({where})"
