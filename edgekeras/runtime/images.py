"""A folder of labelled images as arrays, with numpy alone (no TensorFlow).

One sub-folder per class, class ids in the sorted order of the folder names
(`image_dataset_from_directory` semantics, as `edgekeras.folders` trains
with). Images are decoded (PNG and binary PPM/PGM natively; JPEG and other
formats through Pillow when it is installed), made RGB, resized bilinearly
with half-pixel centres (what `tf.image.resize` does) and scaled the way the
model was trained (`edgekeras.choices.NORMALIZATIONS`).

Example:

```python
from edgekeras.runtime.images import image_folder
folder = image_folder("photos/", image_size=96)
for images, labels in folder.batches(32, normalization="minus_one_to_one"):
    ...
```
"""

import dataclasses
import os
import struct
import zlib

import numpy as np

from edgekeras.choices import NORMALIZATIONS
from edgekeras.errors import EdgekerasError

__all__ = ["ImageFolder", "ImageFolderReadError", "decode_image", "image_folder", "normalize", "resize_bilinear"]

IMAGE_SUFFIXES = (".png", ".ppm", ".pgm", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_CAFFE_MEAN_BGR = np.array((103.939, 116.779, 123.68), np.float32)
_TORCH_MEAN = np.array((0.485, 0.456, 0.406), np.float32)
_TORCH_STD = np.array((0.229, 0.224, 0.225), np.float32)


class ImageFolderReadError(EdgekerasError, ValueError):
    """An image folder is missing, empty, not one sub-folder per class, or holds an unreadable image."""


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw, height, stride, bpp):
    """Undoes PNG's per-row filters (types 0-4), in place of the scanlines."""
    rows = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.int32)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 2:
            current = (line + previous) & 0xFF
        else:
            # Sub, Average and Paeth depend on the byte to the left: sequential.
            current = line.copy()
            for x in range(stride):
                left = current[x - bpp] if x >= bpp else 0
                up, up_left = previous[x], previous[x - bpp] if x >= bpp else 0
                if kind == 1:
                    current[x] = (current[x] + left) & 0xFF
                elif kind == 3:
                    current[x] = (current[x] + ((left + up) >> 1)) & 0xFF
                elif kind == 4:
                    current[x] = (current[x] + _paeth(left, up, up_left)) & 0xFF
                else:
                    raise ValueError(f"unknown PNG filter type {kind}")
        rows[y] = current
        previous = current
    return rows


def _decode_png(data):
    position, chunks, palette = 8, [], None
    header = None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("no IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or interlace or color not in _PNG_CHANNELS:
        raise ValueError(f"8-bit non-interlaced PNGs only (bit depth {depth}, colour type {color}, interlace {interlace})")
    channels = _PNG_CHANNELS[color]
    rows = _unfilter(zlib.decompress(b"".join(chunks)), height, width * channels, channels)
    image = rows.reshape(height, width, channels)
    if color == 3:
        image = palette[image[..., 0]]
    return image


def _decode_pnm(data):
    fields, position = [], 2
    while len(fields) < 3:
        while data[position:position + 1].isspace():
            position += 1
        if data[position:position + 1] == b"#":
            position = data.index(b"\n", position)
            continue
        end = position
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(int(data[position:end]))
        position = end
    width, height, maximum = fields
    if maximum != 255:
        raise ValueError(f"8-bit PPM/PGM only (maximum value {maximum})")
    channels = 3 if data[:2] == b"P6" else 1
    return np.frombuffer(data, np.uint8, width * height * channels, position + 1).reshape(height, width, channels)


def decode_image(path):
    """Returns the image at `path` as a uint8 RGB array `(height, width, 3)`.

    Args:
        path: a PNG (8-bit), binary PPM/PGM, or any format Pillow reads when
            Pillow is installed.

    Raises:
        ImageFolderReadError: the file cannot be decoded (the message says
            how to make it readable).

    Example:

    ```python
    decode_image("photos/cat/1.png").shape  # (h, w, 3)
    ```
    """
    with open(path, "rb") as file:
        data = file.read()
    try:
        if _pillow() is not None:
            # Faster than the pure-numpy PNG decoder; PNG is lossless, so both give the same pixels.
            image = _decode_with_pillow(path)
        elif data.startswith(_PNG_SIGNATURE):
            image = _decode_png(data)
        elif data[:2] in (b"P5", b"P6"):
            image = _decode_pnm(data)
        else:
            raise ValueError("not a PNG or PPM/PGM file and Pillow is not installed")
    except (ValueError, struct.error, zlib.error, OSError) as error:
        raise ImageFolderReadError(
            f"Argument `images` holds a file that cannot be decoded ({error}). Received: {os.fspath(path)!r}. "
            "Save it as an 8-bit PNG, or install Pillow (pip install pillow) for JPEG and other formats."
        ) from error
    if image.shape[-1] in (1, 2):
        image = np.repeat(image[..., :1], 3, axis=-1)
    return image[..., :3]


def _pillow():
    try:
        from PIL import Image  # optional: numpy alone decodes PNG and PPM/PGM
    except ImportError:
        return None
    return Image


def _decode_with_pillow(path):
    with _pillow().open(path) as image:
        return np.asarray(image.convert("RGB"))


def resize_bilinear(image, size):
    """Bilinear resize with half-pixel centres, as `tf.image.resize(..., "bilinear")`.

    Args:
        image: `(height, width, channels)` array.
        size: the output's side (square).

    Returns:
        float32 array `(size, size, channels)`.

    Example:

    ```python
    resize_bilinear(np.zeros((32, 32, 3), np.uint8), 96).shape  # (96, 96, 3)
    ```
    """
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image

    def axis(source):
        coords = np.clip((np.arange(size, dtype=np.float32) + 0.5) * (source / size) - 0.5, 0, source - 1)
        low = np.floor(coords).astype(np.int64)
        return low, np.minimum(low + 1, source - 1), (coords - low)[:, None]

    top, bottom, dy = axis(height)
    left, right, dx = axis(width)
    rows = image[top] * (1 - dy[..., None]) + image[bottom] * dy[..., None]
    return rows[:, left] * (1 - dx) + rows[:, right] * dx


def normalize(images, normalization="minus_one_to_one"):
    """Scales pixels in [0, 255] as `edgekeras.images.normalize` does, in numpy.

    Args:
        images: RGB pixels, channels last.
        normalization: one of `edgekeras.choices.NORMALIZATIONS`.

    Returns:
        A float32 array of the same shape.

    Example:

    ```python
    normalize(np.array([0.0, 127.5, 255.0]))  # [-1, 0, 1]
    ```
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"Argument `normalization` must be one of ({', '.join(map(repr, NORMALIZATIONS))}). "
            f"Received: normalization={normalization!r}. Use the one the model was trained with "
            "(the run's config.toml, [data] normalization, or its architecture's default)."
        )
    images = np.asarray(images, np.float32)
    if normalization == "minus_one_to_one":
        return images / 127.5 - 1.0
    if normalization == "zero_to_one":
        return images / 255.0
    if normalization == "pixels":
        return images
    if normalization == "caffe":
        return images[..., ::-1] - _CAFFE_MEAN_BGR
    return (images / 255.0 - _TORCH_MEAN) / _TORCH_STD


@dataclasses.dataclass
class ImageFolder:
    """The images of a class-per-folder directory.

    Attributes:
        class_names: the sub-folders, sorted; a class's id is its index.
        paths: every image file, class by class.
        labels: int64 class id of each path.
        image_size: the side images are resized to.
    """

    class_names: list
    paths: list
    labels: np.ndarray
    image_size: int

    def batches(self, batch_size=32, normalization="minus_one_to_one"):
        """Yields `(images, labels)`: float32 `(n, size, size, 3)` scaled by `normalization`."""
        for start in range(0, len(self.paths), batch_size):
            chunk = self.paths[start:start + batch_size]
            images = np.stack([resize_bilinear(decode_image(path), self.image_size) for path in chunk])
            # Training rounds resized images back to uint8 before scaling.
            images = np.clip(np.round(images), 0, 255)
            yield normalize(images, normalization), self.labels[start:start + batch_size]


def image_folder(directory, image_size, class_names=None):
    """Lists the images of `directory` (one sub-folder per class).

    Args:
        directory: the folder to read.
        image_size: the model's input side, in pixels.
        class_names: the model's classes in id order, when they differ from
            the sorted sub-folder names (e.g. a subset of the training classes).

    Returns:
        An `ImageFolder`.

    Raises:
        ImageFolderReadError: a missing folder, no class sub-folders, no
            images, or a sub-folder that is not among `class_names`.

    Example:

    ```python
    folder = image_folder("photos/", 96)
    folder.class_names, len(folder.paths)
    ```
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ImageFolderReadError(
            f"Argument `images` must be a directory with one sub-folder of images per class. "
            f"Received: images={directory!r}, which is not a directory."
        )
    folders = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        raise ImageFolderReadError(
            f"Argument `images` must hold one sub-folder of images per class. Received: images={directory!r} "
            "with no sub-folders. Put each class's images in a folder named after the class."
        )
    names = list(class_names) if class_names is not None else folders
    unknown = [name for name in folders if name not in names]
    if unknown:
        raise ImageFolderReadError(
            f"Argument `images` has class folders the model does not know: {unknown}. Received: images={directory!r}, "
            f"class names {names}. Remove those folders or pass the model's class names."
        )
    paths, labels = [], []
    for name in folders:
        files = sorted(f for f in os.listdir(os.path.join(directory, name)) if f.lower().endswith(IMAGE_SUFFIXES))
        paths.extend(os.path.join(directory, name, f) for f in files)
        labels.extend([names.index(name)] * len(files))
    if not paths:
        raise ImageFolderReadError(
            f"Argument `images` holds no images ({', '.join(IMAGE_SUFFIXES)}). Received: images={directory!r}"
        )
    return ImageFolder(class_names=names, paths=paths, labels=np.array(labels, np.int64), image_size=int(image_size))
