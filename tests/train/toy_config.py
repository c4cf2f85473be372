"""The trainer tests' subprocess config: `python -m train --config tests/train/toy_config.py --workdir DIR`
(the toy classifier of train/tasks/toy.py; a few seconds)."""
from train.tasks import toy


def get_config():
    return toy.config()
