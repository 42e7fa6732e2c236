"""`edgekeras init`: a complete, commented starting config for `edgekeras run`.

Every section and key is written, each key with what it does (from its
section's documented attributes), the values the defaults except what the
arguments choose: the model (an architecture, a factory of yours or a model
file) and the images (a TFDS dataset or a directory of class folders). The
text passes `edgekeras.app.config.load_config` as written. Nothing here
imports TensorFlow.

Example:

```python
from edgekeras.app.init_config import starter_config

text = starter_config(architecture="resnet50", images="photos/")
```
"""

import dataclasses
import inspect
import os
import re
import textwrap

from edgekeras.app.config import Config, ConfigError, _SECTIONS, _toml_value, parse_config, read_toml
from edgekeras.choices import NORMALIZATIONS
from edgekeras.io import atomic_write_text

__all__ = ["InitError", "init", "starter_config", "write_starter_config"]

_WIDTH = 100
_ENTRY = re.compile(r"^(\w+): ?(.*)$")
# Which command-line argument sets which config key, so an error names the argument.
ARGUMENTS = {
    "model.architecture": "--architecture", "model.factory": "--factory", "model.file": "--model-file",
    "data.dataset": "--dataset", "data.directory": "--images", "data.test_directory": "--test-images",
    "data.normalization": "--normalization", "run.name": "--name", "run.output_dir": "--output-dir",
}


class InitError(ConfigError):
    """`edgekeras init` was given arguments that make no valid config, or would overwrite a file."""


def _fail(argument, requirement, value):
    raise InitError(f"Argument `{argument}` must be {requirement}. Received: {argument}={value!r}")


def _documentation(cls):
    """`(description, {key: description})` from a section's docstring (its Attributes block)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    head, _, attributes = doc.partition("\nAttributes:\n")
    keys, current = {}, None
    for line in attributes.splitlines():
        entry = _ENTRY.match(line.strip()) if not line.startswith(" " * 5) else None
        if entry and entry.group(1) in {field.name for field in dataclasses.fields(cls)}:
            current = entry.group(1)
            keys[current] = entry.group(2)
        elif current and line.strip():
            keys[current] += " " + line.strip()
    # The first line names the section ("[train]: ..."); the table header says that.
    summary = head.split("\n", 1)[0].split(":", 1)[-1].strip()
    rest = " ".join(line.strip() for line in head.split("\n")[1:] if line.strip())
    text = summary + (" " + rest if rest else "")
    return text[:1].upper() + text[1:], keys


def _comment(text, indent=""):
    return [f"{indent}# {line}" for line in textwrap.wrap(text, _WIDTH - 2 - len(indent))]


def _choices(architecture, factory, model_file, dataset, images, test_images, normalization):
    """The config values the arguments set, as `{section: {key: value}}`."""
    if sum(bool(source) for source in (architecture, factory, model_file)) > 1:
        _fail("--architecture", "left out with `--factory` or `--model-file` (one model source)", architecture)
    if dataset and images:
        _fail("--dataset", "left out with `--images` (one image source)", dataset)
    if test_images and not images:
        _fail("--test-images", "left out unless `--images` is given", test_images)
    for argument, path in (("--images", images), ("--test-images", test_images)):
        if path and not os.path.isdir(path):
            _fail(argument, "a directory with one sub-folder of images per class", path)
    if model_file and not os.path.exists(model_file):
        _fail("--model-file", "an existing .h5 or .keras file or SavedModel directory", model_file)
    yours = "--factory" if factory else "--model-file" if model_file else None
    if yours and not normalization:
        _fail("--normalization", f"given with `{yours}`: how your model expects its pixels scaled, one of "
              f"{', '.join(NORMALIZATIONS)}", normalization)
    values = {"data": {"normalization": normalization or "auto"}, "model": {}, "train": {}}
    if images:
        values["data"].update(directory=images, test_directory=test_images or "")
    else:
        values["data"]["dataset"] = dataset or "cifar10"
    if factory:
        values["model"]["factory"] = factory
    elif model_file:
        values["model"]["file"] = model_file
        values["train"]["epochs"] = 0  # a trained model: pruned and quantized, not trained again
    else:
        values["model"]["architecture"] = architecture or "mobilenet_v2"
    return values


def _validated(values):
    try:
        return parse_config(values, source="edgekeras init")
    except ConfigError as error:
        key = next((key for key in ARGUMENTS if f"`{key}`" in str(error)), None)
        argument = f"Argument `{ARGUMENTS[key]}`: " if key else ""
        raise InitError(f"{argument}{error}") from None


def _header(config):
    model = config.model
    source = {"architecture": f"the {model.architecture} architecture", "factory": f"your factory {model.factory}",
              "file": f"your model file {model.file}"}[model.kind]
    images = f"the class folders of {config.data.directory}" if config.data.directory else (
        f"the TFDS dataset {config.data.dataset}")
    return [
        "edgekeras run config, written by `edgekeras init`.",
        f"Model: {source}. Images: {images}.",
        "Every key is listed with what it does; the values are edgekeras' defaults except those marked",
        "`# set by edgekeras init`. Run it with: edgekeras run --config <this file>",
    ]


def starter_config(*, architecture=None, factory=None, model_file=None, dataset=None, images=None,
                   test_images=None, normalization=None, name="default", output_dir="runs"):
    """The text of a complete, commented `edgekeras run` config.

    Args:
        architecture: a backbone of `edgekeras.choices.ARCHITECTURES`
            (default "mobilenet_v2" when no factory or file is given).
        factory: "package.module:function" of yours returning a model.
        model_file: a trained model of yours (.h5, .keras, SavedModel); the
            config then trains 0 float epochs.
        dataset: a TFDS image-classification dataset (default "cifar10").
        images: a directory with one sub-folder of images per class.
        test_images: a directory of the same layout with the test images.
        normalization: how pixels are scaled (`edgekeras.choices.NORMALIZATIONS`);
            needed with `factory` or `model_file`, else the architecture's.
        name: the run's name (`run.name`).
        output_dir: where run directories go (`run.output_dir`).

    Returns:
        The TOML text; `load_config` of it passes.

    Raises:
        InitError: arguments that make no valid config, naming the
            command-line argument (e.g. two model sources, no normalization
            for a model of yours, a missing directory).
    """
    values = _choices(architecture, factory, model_file, dataset, images, test_images, normalization)
    values["run"] = {"name": name, "output_dir": output_dir}
    config = _validated(values)
    defaults = Config()
    lines = [f"# {line}" for line in _header(config)]
    for section_name, cls in _SECTIONS.items():
        summary, documented = _documentation(cls)
        lines += ["", *_comment(summary), f"[{section_name}]"]
        section = getattr(config, section_name)
        for field in dataclasses.fields(section):
            lines += _comment(documented.get(field.name, ""))
            value = getattr(section, field.name)
            mark = "  # set by edgekeras init" if value != getattr(getattr(defaults, section_name), field.name) else ""
            lines.append(f"{field.name} = {_toml_value(value)}{mark}")
    return "\n".join(lines) + "\n"


def write_starter_config(path, *, force=False, **choices):
    """Writes `starter_config(**choices)` to `path` atomically and returns `path`.

    Args:
        path: the .toml file to write.
        force: replace an existing file.
        **choices: the keywords of `starter_config`.

    Raises:
        InitError: `path` exists (without `force`), its directory does not,
            or the choices make no valid config.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        _fail("config", "a file path, not a directory", path)
    if os.path.exists(path) and not force:
        raise InitError(f"{path} exists; pass --force to overwrite it. Received: config={path!r}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        _fail("config", "a path in an existing directory", path)
    text = starter_config(**choices)
    atomic_write_text(path, text)
    # The file as written must load (the generator and the parser agree).
    parse_config(read_toml(path), source=path)
    return path


def init(args):
    """`edgekeras init`: writes the starting config the arguments describe and says how to run it."""
    name = args.name or os.path.splitext(os.path.basename(args.config))[0] or Config().run.name
    path = write_starter_config(
        args.config, force=args.force, architecture=args.architecture, factory=args.factory,
        model_file=args.model_file, dataset=args.dataset, images=args.images, test_images=args.test_images,
        normalization=args.normalization, name=name, output_dir=args.output_dir,
    )
    print(f"wrote {path}; edit it, then: edgekeras run --config {path}")
    return 0
