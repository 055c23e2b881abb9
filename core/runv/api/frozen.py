"""Immutable values: the one base of runv's records (the plugin contract's VMSpec, Share...,
the OCI model, the settings, a container's record), without attrs or dataclasses: the hot
commands read records, and attrs costs ≈25 ms to import here (twice Python's own start),
dataclasses ≈10 ms (the ``inspect`` it imports).

A subclass's fields are its annotations, in order, after its bases' fields; a class
attribute is a field's default, and :func:`field` gives a fresh one per instance
(``factory``) or leaves a field out of comparisons (``eq=False``); a dict default is
copied for each instance. Instances are built positionally or by keyword. Type checkers
see the subclasses as frozen dataclasses (PEP 681).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ``runv state`` 3 ms: type checkers read the real one
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar, dataclass_transform

    T = TypeVar("T", bound="Frozen")
else:

    def dataclass_transform(**_kwargs):
        return lambda cls: cls


class Field:
    """A field's default made by ``factory`` for each instance, or a field left out of ``==``."""

    def __init__(self, default: object, factory: Callable[[], object] | None, eq: bool) -> None:
        self.default, self.factory, self.eq = default, factory, eq


_MISSING = object()


def field(*, default: Any = _MISSING, factory: Callable[[], Any] | None = None, eq: bool = True) -> Any:
    """A field with a ``default``, a default made by ``factory`` per instance, and/or left out
    of comparisons and hashing (``eq=False``: derived data, such as a parsed form of another field)."""
    return Field(default, factory, eq)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Frozen:
    _fields: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}
    _factories: dict[str, Callable[[], object]] = {}
    _compared: tuple[str, ...] = ()

    def __init_subclass__(cls) -> None:
        own = tuple(name for name in vars(cls).get("__annotations__", {}) if not name.startswith("_"))
        cls._fields = cls._fields + tuple(name for name in own if name not in cls._fields)
        cls._defaults, cls._factories = dict(cls._defaults), dict(cls._factories)
        compared = set(cls._compared)
        for name in own:
            value = vars(cls).get(name, _MISSING)
            compared.add(name)
            if isinstance(value, Field):
                if not value.eq:
                    compared.discard(name)
                if value.factory is not None:
                    cls._factories[name] = value.factory
                elif value.default is not _MISSING:
                    cls._defaults[name] = value.default
                delattr(cls, name)
            elif value is not _MISSING:
                cls._defaults[name] = value
        cls._compared = tuple(name for name in cls._fields if name in compared)

    def __init__(self, *args: object, **values: object) -> None:
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__}() takes {len(self._fields)} fields, {len(args)} given")
        for name, value in zip(self._fields, args):
            if name in values:
                raise TypeError(f"{type(self).__name__}(): {name} given twice")
            values[name] = value
        unknown = values.keys() - set(self._fields)
        missing = [name for name in self._fields if name not in values and name not in self._defaults and name not in self._factories]
        if unknown or missing:
            problems = [f"unexpected {', '.join(sorted(unknown))}"] * bool(unknown) + [f"missing {', '.join(missing)}"] * bool(missing)
            raise TypeError(f"{type(self).__name__}(): {'; '.join(problems)}")
        for name in self._fields:
            if name not in values:
                if name in self._factories:
                    values[name] = self._factories[name]()
                else:
                    default = self._defaults[name]
                    values[name] = dict(default) if isinstance(default, dict) else default
        object.__setattr__(self, "__dict__", {name: values[name] for name in self._fields})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: use evolve({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def asdict(self) -> dict[str, Any]:
        """The fields in their declared order, shallow (:func:`to_json` for JSON)."""
        return dict(self.__dict__)

    def evolve(self: T, **changes: Any) -> T:
        """A copy with ``changes`` applied."""
        return type(self)(**{**self.__dict__, **changes})

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(self.__dict__[n] == other.__dict__[n] for n in self._compared)

    def __hash__(self) -> int:
        return hash((type(self), *(self.__dict__[n] for n in self._compared)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


def to_json(value: Any) -> Any:
    """``value`` as JSON-ready data: Frozen values as dicts, tuples as lists, paths as strings."""
    if isinstance(value, Frozen):
        return {name: to_json(item) for name, item in value.__dict__.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    import os

    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
