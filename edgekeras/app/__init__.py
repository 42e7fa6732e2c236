"""The application on top of the library: `edgekeras run`, `edgekeras tune` and the CLI.

- `config`: the TOML configs of `run` and `tune`, validated section by section.
- `pipeline`: `run(config)`, data -> model -> train/prune/QAT -> export -> evaluate -> report.
- `state`: the run directory's `state.json`, so a killed run resumes.
- `tune`: `tune(config)`, a keras-tuner search from a config.
- `report`: report.json, report.md, the Pareto plot and TensorBoard scalars.
- `cli` / `commands`: the `edgekeras` command line.

Nothing in the library (`edgekeras.*` outside `app`) imports from here.
"""
