import numpy as np
import pytest
import tensorflow as tf

from edgekeras import images as training_images
from edgekeras.choices import NORMALIZATIONS
from edgekeras.runtime import images
from edgekeras.runtime.images import ImageFolderReadError, decode_image, image_folder, resize_bilinear


def _png(path, array, **options):
    from PIL import Image

    Image.fromarray(array).save(path, **options)
    return path


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_the_numpy_png_decoder_matches_pillow(tmp_path, monkeypatch, mode):
    from PIL import Image

    rng = np.random.default_rng(0)
    # A smooth gradient plus noise makes the encoder use every row filter, Paeth included.
    ramp = np.add.outer(np.arange(20), np.arange(23)).astype(np.uint8) * 5
    array = (ramp[..., None] + rng.integers(0, 9, (20, 23, 3))).astype(np.uint8)
    picture = Image.fromarray(array).convert(mode)
    path = tmp_path / f"{mode}.png"
    picture.save(path, optimize=True)
    expected = np.asarray(Image.open(path).convert("RGB"))
    monkeypatch.setattr(images, "_pillow", lambda: None)
    np.testing.assert_array_equal(decode_image(path), expected)


def test_without_pillow_a_jpeg_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 32)
    monkeypatch.setattr(images, "_pillow", lambda: None)
    with pytest.raises(ImageFolderReadError, match=r"cannot be decoded .*install Pillow"):
        decode_image(path)


@pytest.mark.parametrize("source, size", [((32, 32), 96), ((40, 30), 16), ((16, 16), 16)])
def test_resize_matches_tf_image_resize(source, size):
    image = np.random.default_rng(1).integers(0, 256, (*source, 3)).astype(np.float32)
    expected = tf.image.resize(image, (size, size), method="bilinear").numpy()
    np.testing.assert_allclose(resize_bilinear(image, size), expected, atol=1e-3)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_normalize_matches_the_training_pipeline(normalization):
    pixels = np.random.default_rng(2).integers(0, 256, (2, 4, 4, 3)).astype(np.float32)
    expected = training_images.normalize(pixels, normalization).numpy()
    np.testing.assert_allclose(images.normalize(pixels, normalization), expected, rtol=1e-6, atol=1e-5)


def test_normalize_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"Argument `normalization` must be one of .*Received: normalization='imagenet'"):
        images.normalize(np.zeros(3), "imagenet")


def test_folder_classes_follow_sorted_folder_names(colour_folder):
    folder = image_folder(colour_folder, 16)
    assert folder.class_names == ["blue", "green", "red"]
    assert len(folder.paths) == 30 and sorted(set(folder.labels.tolist())) == [0, 1, 2]
    batch, labels = next(folder.batches(8))
    assert batch.shape == (8, 16, 16, 3) and batch.min() >= -1.0 and batch.max() <= 1.0
    assert labels.tolist() == [0] * 8


def test_folder_with_the_models_class_names(colour_folder):
    folder = image_folder(colour_folder, 16, class_names=["red", "green", "blue", "black"])
    assert folder.labels[0] == 2  # "blue" images are class 2 of the model


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda root: root / "missing", r"not a directory"),
        (lambda root: root, r"with no sub-folders"),
        (lambda root: (root / "cat").mkdir() or root, r"holds no images"),
    ],
)
def test_bad_folders(tmp_path, make, match):
    with pytest.raises(ImageFolderReadError, match=match):
        image_folder(make(tmp_path), 16)


def test_a_folder_the_model_does_not_know(colour_folder):
    with pytest.raises(ImageFolderReadError, match=r"class folders the model does not know: \['green'\]"):
        image_folder(colour_folder, 16, class_names=["blue", "red"])
