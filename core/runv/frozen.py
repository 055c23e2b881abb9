"""Immutable records for the models the fast commands read (settings, a container's
record, its OCI state), without attrs: ``runv state`` must not pay attrs' import
(≈25 ms here, more than twice Python's own start) to print a JSON file.

A subclass's fields are its annotations, in order; a class attribute is a field's default
(a dict default is copied for each instance). Instances are built from keywords only.
"""

from __future__ import annotations


class Frozen:
    _fields: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}

    def __init_subclass__(cls) -> None:
        cls._fields = tuple(name for name in vars(cls).get("__annotations__", {}) if not name.startswith("_"))
        cls._defaults = {name: vars(cls)[name] for name in cls._fields if name in vars(cls)}

    def __init__(self, **values: object) -> None:
        unknown = values.keys() - set(self._fields)
        missing = [name for name in self._fields if name not in values and name not in self._defaults]
        if unknown or missing:
            problems = [f"unexpected {', '.join(sorted(unknown))}"] * bool(unknown) + [f"missing {', '.join(missing)}"] * bool(missing)
            raise TypeError(f"{type(self).__name__}(): {'; '.join(problems)}")
        for name, default in self._defaults.items():
            if name not in values:
                values[name] = dict(default) if isinstance(default, dict) else default
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: use evolve({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def asdict(self) -> dict[str, object]:
        """The fields in their declared order (what gets written as JSON)."""
        return {name: self.__dict__[name] for name in self._fields}

    def evolve(self, **changes: object) -> Frozen:
        """A copy with ``changes`` applied."""
        return type(self)(**{**self.asdict(), **changes})

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.asdict() == self.asdict()

    def __hash__(self) -> int:
        return hash((type(self), *self.asdict().values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.asdict().items())})"
