"""A run directory's `state.json`: what `edgekeras run` finished, so a killed run resumes.

`state.json` holds the fingerprint of the config that made the directory,
the stages' timings (summed over attempts), and for each cached activation
array, exported .tflite file and evaluation the file it lives in and that
file's SHA-256; the "auto" report roles' choices keep the SHA-256 of the
files they were made on. It is rewritten atomically after every step, and every
artifact is renamed into place, so whatever kills a run (even SIGKILL) leaves
a state that names only whole files. A file whose checksum no longer matches
is never reused.

Example:

```python
from edgekeras.app.state import verify_run_dir

assert verify_run_dir("runs/demo") == []
```
"""

import dataclasses
import hashlib
import os

import numpy as np

from edgekeras.app.config import config_to_toml
from edgekeras.app.report import VariantResult, validate_report
from edgekeras.errors import EdgekerasError
from edgekeras.io import atomic_path, atomic_write_json, read_json, remove
from edgekeras.litert import ExportedModel, TFLiteModel, Verification

__all__ = ["STATE_FILE", "RunDirectoryError", "RunState", "config_fingerprint", "file_sha256", "log", "verify_run_dir"]

STATE_FILE = "state.json"
_STATE_VERSION = 1


class RunDirectoryError(EdgekerasError, ValueError):
    """The run directory belongs to another config or cannot be read."""


def log(message):
    """Prints one `edgekeras run` progress line (flushed: a killed run keeps its log)."""
    print(f"[edgekeras run] {message}", flush=True)


def file_sha256(path):
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The TOML lines of keys added after run directories were written, at their defaults.
_LATER_KEYS_AT_DEFAULT = ('keras = "tf_keras"\n',)


def config_fingerprint(config):
    """A hash of every key of `config` that changes what a run produces.

    Progress bars and the report's roles change no artifact: a finished run
    whose roles were edited is re-reported, not refused.

    Args:
        config: an `edgekeras.app.config.Config`.

    Returns:
        A SHA-256 hex digest.
    """
    settled = dataclasses.replace(
        config,
        evaluate=dataclasses.replace(config.evaluate, progress=True),
        report=type(config.report)(),
    )
    text = config_to_toml(settled)
    unchanged = type(settled.channels)()
    if settled.channels == unchanged:
        # A section added later hashes as before while every key holds its default.
        start = text.index("\n[channels]\n")
        text = text[:start] + text[text.index("\n[", start + 1):]
    # A key added in a later version hashes as before while it holds its default, so a run
    # directory an earlier version started still resumes.
    for line in _LATER_KEYS_AT_DEFAULT:
        text = text.replace(line, "", 1)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _intact(run_dir, entry):
    """Whether a state entry `{"file": ..., "sha256": ...}` still names the same bytes."""
    if not isinstance(entry, dict) or "file" not in entry:
        return False
    path = os.path.join(run_dir, entry["file"])
    return os.path.isfile(path) and file_sha256(path) == entry.get("sha256")


class RunState:
    """`state.json`: what a run directory holds, kept up to date atomically.

    Only the chief of a distributed run writes it; elsewhere (`enabled`
    False) every method is a no-op and nothing is reused.

    Args:
        run_dir: the run directory.
        config: the run's `Config`.
        overwrite: delete whatever `run_dir` holds and start over.
        enabled: read and write `state.json` (the chief) or not.

    Raises:
        RunDirectoryError: `run_dir` holds a run of another config, files but
            no `state.json`, or an unreadable `state.json` (unless `overwrite`).

    Example:

    ```python
    state = RunState("runs/demo", config, overwrite=False, enabled=True)
    state.save()
    ```
    """

    def __init__(self, run_dir, config, *, overwrite, enabled):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, STATE_FILE)
        self.enabled = enabled
        self.data = {
            "version": _STATE_VERSION, "config": config_fingerprint(config), "source": config.source, "finished": False,
            "cache": {}, "exports": {}, "evaluations": {}, "role_choices": {}, "timings": {}, "attempts": 0,
        }
        if not enabled:
            return
        existing = self._read(config, overwrite)
        if existing is not None and not overwrite:
            self.data = existing
        elif overwrite and os.path.isdir(run_dir):
            for entry in os.listdir(run_dir):
                remove(os.path.join(run_dir, entry))
        self.data["attempts"] = self.data.get("attempts", 0) + 1

    def _read(self, config, overwrite):
        """The state a previous attempt left, or None to start afresh."""
        fix = (
            "Pass --overwrite (run(..., overwrite=True)) to delete it and start over, or choose another "
            "directory with --name / run.name."
        )
        if not os.path.exists(self.path):
            if os.path.isdir(self.run_dir) and os.listdir(self.run_dir) and not overwrite:
                raise RunDirectoryError(
                    f"Run directory `{self.run_dir}` holds files but no {STATE_FILE}, so it is not a run edgekeras "
                    f"can resume. Received: run.name={config.run.name!r}. {fix}"
                )
            return None
        existing = read_json(self.path)
        if not isinstance(existing, dict) or "config" not in existing:
            if overwrite:
                return None
            raise RunDirectoryError(
                f"Run directory `{self.run_dir}` has an unreadable {self.path} (not a JSON object with the "
                f"fingerprint of a config). {fix}"
            )
        if existing["config"] != self.data["config"] and not overwrite:
            raise RunDirectoryError(
                f"Run directory `{self.run_dir}` holds a run of another config (made from "
                f"{existing.get('source', '?')}; see {os.path.join(self.run_dir, 'config.toml')}). "
                f"Received: a config from {config.source} that differs from it. {fix}"
            )
        return existing

    @property
    def finished(self):
        return self.data.get("finished", False)

    def save(self):
        if self.enabled:
            atomic_write_json(self.path, self.data)

    def add_time(self, stage, seconds):
        # Summed over attempts: the compute a resumed run really cost.
        self.data["timings"][stage] = round(self.data["timings"].get(stage, 0.0) + seconds, 2)

    def record_file(self, path):
        """A state entry for a file just written: its path and checksum."""
        return {"file": os.path.relpath(path, self.run_dir), "sha256": file_sha256(path)}

    def valid_file(self, entry):
        """Whether `entry` (from `record_file`) still names the same bytes."""
        return self.enabled and _intact(self.run_dir, entry)

    def cached_arrays(self, key, compute):
        """`compute()`'s `(features, labels)`, stored once and memory-mapped.

        The features come back memory-mapped from their file the first time
        too, not as the array `compute()` built: the run then holds no
        anonymous copy of a cache of GBs, and the kernel can drop its pages
        under memory pressure. A cache whose checksum fails (a kill mid-write
        cannot cause one, the files are renamed into place, but a disk can) is
        computed again.
        """
        entry = self.data["cache"].get(key)
        if entry is not None:
            if self.valid_file(entry["features"]) and self.valid_file(entry["labels"]):
                log(f"reusing the cached {key} activations")
                return (
                    np.load(os.path.join(self.run_dir, entry["features"]["file"]), mmap_mode="r"),
                    np.load(os.path.join(self.run_dir, entry["labels"]["file"])),
                )
            log(f"the cached {key} activations fail their checksum: computing them again")
        features, labels = compute()
        if not self.enabled:
            return features, labels
        entry = {}
        for name, array in (("features", features), ("labels", labels)):
            path = os.path.join(self.run_dir, "cache", f"{key}_{name}.npy")
            with atomic_path(path) as temporary:
                np.save(temporary, array)
            entry[name] = self.record_file(path)
        self.data["cache"][key] = entry
        self.save()
        del features  # the last reference: its memory goes back before training starts
        return np.load(os.path.join(self.run_dir, entry["features"]["file"]), mmap_mode="r"), labels

    def drop_cache(self):
        """Deletes the cached activations (GBs) once nothing needs them."""
        if self.enabled:
            remove(os.path.join(self.run_dir, "cache"))
            self.data["cache"] = {}

    def exported(self, name):
        """The `ExportedModel` of variant `name` if its file is intact, else None."""
        entry = self.data["exports"].get(name)
        if not self.valid_file(entry):
            return None
        fields = {field.name for field in dataclasses.fields(ExportedModel)}
        values = {key: value for key, value in entry.items() if key in fields}
        values["path"] = os.path.join(self.run_dir, entry["file"])
        values["verification"] = Verification(**entry["verification"])
        return ExportedModel(**values)

    def record_export(self, name, result):
        """Records the `ExportedModel` of variant `name`; its old evaluation no longer applies."""
        self.data["exports"][name] = {**result.to_dict(), **self.record_file(result.path)}
        self.data["evaluations"].pop(name, None)
        self.save()

    def evaluation(self, name, role):
        """`(VariantResult, examples)` of the kept evaluation of `name`'s current file, or None."""
        kept = self.data["evaluations"].get(name)
        if kept is None or kept.get("sha256") != self.data["exports"][name]["sha256"]:
            return None
        row = dict(kept["row"], role=role)
        # JSON made the thread counts strings.
        row["latency"] = {int(threads): value for threads, value in row.get("latency", {}).items()}
        return VariantResult(**row), kept["examples"]

    def record_evaluation(self, name, row, examples):
        """Records the evaluation of `name`'s current file (a `VariantResult`)."""
        self.data["evaluations"][name] = {
            "row": row.to_dict(), "examples": examples, "sha256": self.data["exports"][name]["sha256"],
        }
        self.save()

    def _sha256s(self, names):
        exports = self.data["exports"]
        return {name: exports[name]["sha256"] if name in exports else None for name in names}

    def role_choice(self, role, names):
        """The kept choice of the "auto" `role` among the files `names`, or None.

        Kept only while every candidate is the file it was made on (its
        checksum): a file exported again is chosen again.
        """
        kept = self.data.get("role_choices", {}).get(role)
        if not isinstance(kept, dict) or kept.get("sha256") != self._sha256s(names):
            return None
        return {key: value for key, value in kept.items() if key != "sha256"}

    def record_role_choice(self, role, choice, names):
        """Records the choice of `role` (see `edgekeras.app.roles`) made on the current files `names`."""
        self.data.setdefault("role_choices", {})[role] = {**choice, "sha256": self._sha256s(names)}
        self.save()


def verify_run_dir(run_dir):
    """Checks a finished run directory; returns a list of problems (empty if sound).

    Checks: `state.json` says finished; report.json is valid and lists every
    exported variant; every .tflite file matches its recorded checksum and
    loads in LiteRT; report.md and pareto.png exist; no temporary file is
    left anywhere.

    Args:
        run_dir: the run directory.

    Returns:
        A list of problems, one sentence each.

    Example:

    ```python
    from edgekeras.app.state import verify_run_dir

    assert verify_run_dir("runs/demo") == []
    ```
    """
    data = read_json(os.path.join(run_dir, STATE_FILE))
    if not isinstance(data, dict):
        return [f"{STATE_FILE} is missing or unreadable"]
    problems = [] if data.get("finished") else ["the run is not finished"]
    exports = data.get("exports", {})
    report = read_json(os.path.join(run_dir, "report.json"))
    if report is None:
        problems.append("report.json is missing or unreadable")
    else:
        try:
            listed = [variant["name"] for variant in validate_report(report)["variants"]]
            if sorted(listed) != sorted(exports):
                problems.append(f"report.json lists {listed}, the state {sorted(exports)}")
        except (ValueError, KeyError) as error:
            problems.append(f"report.json: {error}")
    problems += [f"{name} is missing" for name in ("report.md", "pareto.png") if not os.path.isfile(os.path.join(run_dir, name))]
    for name, entry in exports.items():
        if not _intact(run_dir, entry):
            file = entry.get("file", name) if isinstance(entry, dict) else name
            problems.append(f"{file} is missing or does not match its checksum")
            continue
        try:
            TFLiteModel(os.path.join(run_dir, entry["file"]), num_threads=1)
        except ValueError as error:
            problems.append(f"{entry['file']} does not load: {error}")
    for root, _, names in os.walk(run_dir):
        problems += [f"temporary file left: {os.path.join(root, n)}" for n in names if n.endswith(".tmp") or ".tmp." in n]
    return problems
