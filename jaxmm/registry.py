"""Name -> entry registries (encoders, data sources, ...): a paper registers its piece from its own module."""
from __future__ import annotations

from jaxmm.checks import fail


class Registry(dict):
    """A dict of entries keyed by their `.name`. `what` names the kind in errors ("encoder", "data source");
    `argument` is the config argument a wrong name came from."""

    def __init__(self, what: str, argument: str):
        super().__init__()
        self.what, self.argument = what, argument

    def register(self, entry):
        if entry.name in self and self[entry.name] != entry:
            raise ValueError(f"{self.what} {entry.name!r} registered twice")
        self[entry.name] = entry
        return entry

    def get(self, name):
        if name not in self:
            fail(self.argument, f"a registered {self.what} (one of {sorted(self)})", repr(name))
        return self[name]
