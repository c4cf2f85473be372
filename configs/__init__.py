"""Experiment configs, one module per paper or job: `python -m train --config <name>[:variant]` (or the file form
`--config configs/<name>.py[:variant]` inside a clone). In a wheel this folder is the package `train.configs`
(setup.py); `train.main.config_path` turns a name into the file."""
