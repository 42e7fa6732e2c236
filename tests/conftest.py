"""Shared fixtures: a tiny prepared TFDS image dataset and the offline data copy."""

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The data copy beside the checkout; $EDGEKERAS_SHARED_DATA points a checkout
# elsewhere (e.g. a git worktree) at it.
SHARED_DATA = pathlib.Path(
    os.environ.get("EDGEKERAS_SHARED_DATA") or pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
SHARED_TFDS = SHARED_DATA / "tfds"
SHARED_WEIGHTS = SHARED_DATA / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5"

TINY_TRAIN = 60
TINY_TEST = 20
TINY_CLASSES = 3
TINY_SIDE = 32


def _tiny_builder_class():
    import tensorflow_datasets as tfds

    class EdgekerasTinyImages(tfds.core.GeneratorBasedBuilder):
        """32x32 RGB images in 3 classes; each class has its own mean colour."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(TINY_SIDE, TINY_SIDE, 3)),
                        "label": tfds.features.ClassLabel(names=["red", "green", "blue"]),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(TINY_TRAIN, seed=1), "test": self._generate_examples(TINY_TEST, seed=2)}

        def _generate_examples(self, count, seed):
            rng = np.random.default_rng(seed)
            for index in range(count):
                label = index % TINY_CLASSES
                image = rng.integers(0, 80, (TINY_SIDE, TINY_SIDE, 3), dtype=np.uint8)
                image[..., label] += 150
                yield index, {"image": image, "label": label}

    return EdgekerasTinyImages


_BUILDER_CLASS = None


@pytest.fixture(scope="session")
def tiny_tfds_dir(tmp_path_factory):
    """A TFDS data dir holding the prepared `edgekeras_tiny_images` dataset.

    Returns the data dir; the dataset name is `edgekeras_tiny_images`, with
    60 train / 20 test 32x32 images in 3 colour-coded classes.
    """
    global _BUILDER_CLASS
    if _BUILDER_CLASS is None:
        _BUILDER_CLASS = _tiny_builder_class()
    data_dir = tmp_path_factory.mktemp("tfds")
    _BUILDER_CLASS(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


@pytest.fixture(scope="session")
def shared_data():
    """The real CIFAR-10 copy and MobileNetV2 weights beside the project."""
    if not (SHARED_TFDS / "cifar10").is_dir() or not SHARED_WEIGHTS.is_file():
        pytest.skip(f"real data not found in {SHARED_DATA}")
    return {"tfds": str(SHARED_TFDS), "weights": str(SHARED_WEIGHTS)}
