"""The device side runs where TensorFlow is not installed."""

import re
import subprocess
import sys

# Makes `import tensorflow` (and tf_keras, tfmot) fail as on a device without them.
BLOCKER = """
import importlib.abc, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "tensorflow_model_optimization", "keras"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoTensorFlow())
"""


def _python(code):
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=300)


def test_runtime_imports_no_tensorflow():
    result = _python("import edgekeras.runtime, edgekeras.app.device\nassert 'tensorflow' not in sys.modules")
    assert result.returncode == 0, result.stderr[-3000:]


def test_device_commands_run_without_tensorflow(colour_models, colour_folder, tmp_path):
    code = (
        "from edgekeras.app.cli import main\n"
        f"assert main(['bench', {str(colour_models['int8'])!r}, '--runs', '5']) == 0\n"
        f"assert main(['evaluate', {str(colour_models['int8'])!r}, '--images', {str(colour_folder)!r}]) == 0\n"
        f"assert main(['c-array', {str(colour_models['int8'])!r}, '--output', {str(tmp_path / 'm.h')!r}]) == 0\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top-1 accuracy" in result.stdout and (tmp_path / "m.h").is_file()


def test_training_commands_on_the_light_install_say_what_to_install(tmp_path):
    code = (
        "from edgekeras.app.cli import main\n"
        f"status = main(['run', '--config', {str(tmp_path / 'x.toml')!r}])\n"
        "assert status == 2, status\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"`run` needs (tensorflow|tf_keras)", result.stderr), result.stderr[-2000:]
    assert 'pip install "edgekeras[train]"' in result.stderr and "Traceback" not in result.stderr
