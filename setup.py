"""The one packaging rule pyproject.toml cannot state: configs/ (kept at the repository root, where
`python -m train --config configs/<name>.py` reads it) ships inside the wheel as the package `train.configs`, so an
installed jaxmm runs `python -m train --config <name>[:variant]` without a clone. Everything else is pyproject.toml.
(`[tool.setuptools.packages.find]` only yields packages by their directory names; a renamed one needs `packages=`.)
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["jaxmm", "jaxmm.*", "train", "train.*"]) + ["train.configs"],
      package_dir={"train.configs": "configs"},
      package_data={"train.configs": ["*/*.json"]})   # data folders beside a config (configs/llava_read_bpe)
