"""What the docs/results/*_table.py scripts share: a run's CPU time from its `/usr/bin/time -v` log and the
mean ± sample sd cell of a per-seed table."""
import re
import statistics


def cpu_seconds(log: str):
    """User + system seconds of the `/usr/bin/time -v` report in the file `log`; None if it is missing or has none."""
    try:
        text = open(log).read()
        return sum(float(re.search(f"{k} time \\(seconds\\): ([0-9.]+)", text).group(1)) for k in ("User", "System"))
    except (OSError, AttributeError):
        return None


def mean_sd(vals, fmt: str = ".3f", n: bool = False) -> str:
    """"m ± sd" over the values (sample sd), with "(len)" when n; one value: the value alone."""
    if len(vals) == 1:
        return f"{vals[0]:{fmt}}"
    return f"{statistics.mean(vals):{fmt}} ± {statistics.stdev(vals):{fmt}}" + (f" ({len(vals)})" if n else "")
