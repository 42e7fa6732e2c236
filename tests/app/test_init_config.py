"""`edgekeras init`: a complete, commented starting config that passes validation as written."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from edgekeras.app.cli import main
from edgekeras.app.config import Config, load_config
from edgekeras.app.init_config import InitError, starter_config


@pytest.fixture
def images(tmp_path):
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize(
    "flags, kind, expected",
    [
        ([], "architecture", {"model.architecture": "mobilenet_v2", "data.dataset": "cifar10", "train.epochs": 3}),
        (["--architecture", "resnet50", "--dataset", "tf_flowers"], "architecture",
         {"model.architecture": "resnet50", "data.dataset": "tf_flowers", "data.normalization": "auto"}),
        (["--factory", "mymodels:build", "--images", "{images}/train", "--normalization", "zero_to_one"], "factory",
         {"model.factory": "mymodels:build", "data.directory": "{images}/train", "data.normalization": "zero_to_one"}),
        (["--model-file", "{images}/model.h5", "--images", "{images}/train", "--test-images", "{images}/test",
          "--normalization", "pixels"], "file",
         {"model.file": "{images}/model.h5", "data.test_directory": "{images}/test", "train.epochs": 0}),
    ],
)
def test_each_model_source_writes_a_config_that_loads(images, capsys, flags, kind, expected):
    (images / "model.h5").write_bytes(b"not read by init")
    path = images / "configs" / "mine.toml"
    path.parent.mkdir()
    assert main(["init", str(path), *(flag.format(images=images) for flag in flags)]) == 0
    assert f"edgekeras run --config {path}" in capsys.readouterr().out
    config = load_config(path)
    assert config.model.kind == kind and config.run.name == "mine"
    for key, value in expected.items():
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == (value.format(images=images) if isinstance(value, str)
                                                           else value)
    assert os.listdir(path.parent) == ["mine.toml"]  # written atomically: no temporary file left


def test_every_section_and_key_is_written_and_commented():
    lines = starter_config(architecture="efficientnet_b0").splitlines()
    for name in Config.__dataclass_fields__:
        if name == "source":
            continue
        header = lines.index(f"[{name}]")
        assert lines[header - 1].startswith("# "), name
        keys = [field.name for field in dataclasses.fields(getattr(Config(), name))]
        for key in keys:
            line = next(i for i, text in enumerate(lines) if text.startswith(f"{key} = ") and i > header)
            # [report]'s keys are described together, in the section's comment.
            assert name == "report" or lines[line - 1].startswith("# "), f"{name}.{key}"
    assert 'architecture = "efficientnet_b0"  # set by edgekeras init' in lines


def test_refuses_to_overwrite_unless_force(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_text("# mine\n")
    assert main(["init", str(path)]) == 2
    assert "pass --force to overwrite it" in capsys.readouterr().err
    assert path.read_text() == "# mine\n"
    assert main(["init", str(path), "--force"]) == 0
    assert load_config(path).model.architecture == "mobilenet_v2"


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--factory", "mymodels:build"], r"Argument `--normalization` must be given with `--factory`"),
        (["--model-file", "{tmp}/missing.h5", "--normalization", "pixels"], r"Argument `--model-file` must be an existing"),
        (["--factory", "not a reference", "--normalization", "pixels"],
         r"Argument `--factory`: Config key `model.factory` must be a \"package.module:function\""),
        (["--images", "{tmp}/missing"], r"Argument `--images` must be a directory with one sub-folder"),
        (["--test-images", "{tmp}"], r"Argument `--test-images` must be left out unless `--images` is given"),
        (["--name", "a/b"], r"Argument `--name`: Config key `run.name` must be a non-empty name"),
    ],
)
def test_errors_name_the_argument(tmp_path, capsys, flags, match):
    path = tmp_path / "mine.toml"
    assert main(["init", str(path), *(flag.format(tmp=tmp_path) for flag in flags)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekeras init: error: ")
    assert re.search(match, err), err
    assert not path.exists()


@pytest.mark.parametrize(
    "where, match", [("dir", r"Argument `config` must be a file path"), ("missing/mine.toml", r"in an existing directory")]
)
def test_bad_config_paths(tmp_path, capsys, where, match):
    (tmp_path / "dir").mkdir()
    assert main(["init", str(tmp_path / where)]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_two_model_sources_are_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["init", str(tmp_path / "mine.toml"), "--architecture", "resnet50", "--factory", "m:f"])
    assert exit_info.value.code == 2
    assert "not allowed with argument --architecture" in capsys.readouterr().err


def test_the_library_refuses_two_model_sources():
    with pytest.raises(InitError, match=r"Argument `--architecture` must be left out with `--factory`"):
        starter_config(architecture="resnet50", factory="m:f", normalization="pixels")


def test_init_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys; from edgekeras.app.cli import main; "
        f"status = main(['init', {str(tmp_path / 'mine.toml')!r}]); "
        "print(status, 'tensorflow' in sys.modules)"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=root)).stdout
    assert out.split()[-2:] == ["0", "False"]
