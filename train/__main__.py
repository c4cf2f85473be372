"""`python -m train --config configs/<name>.py[:variant] --workdir DIR [--config.a.b=value ...]`."""
from train.main import main

if __name__ == "__main__":
    main()
