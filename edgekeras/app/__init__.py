"""The application on top of the library: `edgekeras run`, `edgekeras tune` and the CLI.

- `sections` / `config`: the TOML configs of `run` and `tune`, one section parser for both
  (`tune_config` adds the [tune.space] and [tune.budget] tables).
- `factories`: config sections -> library objects (data, model, trainer, schedule).
- `state`: the run directory's `state.json`, so a killed run resumes.
- `phase_inputs`: what the float and pruning phases train on (cached activations, teacher outputs).
- `roles`: "auto" report roles, chosen between int8 files on the validation split.
- `stages` / `pipeline`: `run(config)` as a loop over stages: data -> model -> train/prune/QAT
  -> export -> choose roles (validation) -> evaluate -> report.
- `tune`: `tune(config)`, a keras-tuner search from a config.
- `report` / `plot`: report.json, report.md, pareto.png (accuracy vs size and vs latency) and TensorBoard scalars.
- `init_config`: `edgekeras init`, a complete, commented starting config.
- `cli` / `commands`: the `edgekeras` command line.

Nothing in the library (`edgekeras.*` outside `app`) imports from here.
"""
