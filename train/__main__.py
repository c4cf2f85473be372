"""`python -m train --config <name>[:variant] --workdir DIR [--config.a.b=value ...]`; <name> is a shipped config
(train.main.config_names(): demo, commit, ...) or a file configs/<name>.py."""
from train.main import main

if __name__ == "__main__":
    main()
