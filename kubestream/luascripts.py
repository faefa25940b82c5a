"""The Lua scripts of ``kubestream/lua/`` (package data), loaded and called by name.

Each ``<name>.lua`` file starts with a header comment naming every ``KEYS[i]`` and
``ARGV[i]`` and the return value, followed by one binding per line
(``local state = ARGV[2]``, ``local rate = tonumber(ARGV[1])``); the body below
uses those locals only. A header line ``-- include: _lib.lua`` prepends that
library file (files named ``_*.lua`` define shared local functions, bind
nothing and include nothing).

``Script(client, "publish.lua")`` registers a script on a client;
calling it with keyword arguments named like its locals puts each value at its
``KEYS``/``ARGV`` position, so callers never assemble positional lists (a script
that binds no KEYS but iterates over them takes them as one positional list). Files are
read on first use and cached; nothing happens at import.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import redis
from redis.typing import EncodableT, KeyT

_INCLUDE = re.compile(r"^-- include: (\S+\.lua)\s*$")
_BINDING = re.compile(r"^local (\w+) = (?:tonumber\()?(KEYS|ARGV)\[(\d+)\]\)?\s*$")
_INDEXED = re.compile(r"\b(KEYS|ARGV)\[")


@dataclass(frozen=True, slots=True)
class ScriptSource:
    """One script file: its source with includes prepended, and the names of its KEYS and ARGV in order."""

    name: str
    source: str
    keys: tuple[str, ...]  # empty: the script takes any number of KEYS (iterates over them)
    argv: tuple[str, ...]
    names: frozenset[str]  # every bound local: the keyword arguments a call takes


def lua_dir() -> Traversable:
    """The folder of the .lua files, wherever kubestream is installed (a wheel or a checkout)."""
    return files("kubestream").joinpath("lua")


def script_names() -> list[str]:
    """The callable scripts (library files excluded), sorted."""
    return sorted(p.name for p in lua_dir().iterdir() if p.name.endswith(".lua") and not p.name.startswith("_"))


def read(name: str) -> str:
    """The text of one .lua file as shipped."""
    return lua_dir().joinpath(name).read_text(encoding="utf-8")


def header(text: str) -> list[str]:
    """The leading comment block: every line up to the first one that is neither a comment nor blank."""
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("--"):
            break
        lines.append(line)
    return lines


@functools.cache
def load(name: str) -> ScriptSource:
    """Parse ``name``: includes, the binding block after the header, and the body's use of KEYS/ARGV.

    Raises ValueError for a file breaking the layout described in the module docstring."""
    text = read(name)
    top = header(text)
    includes = [m.group(1) for m in map(_INCLUDE.match, top) if m]
    library = name.startswith("_")
    if library and includes:
        raise ValueError(f"{name}: a library file includes nothing")
    if not all(lib.startswith("_") for lib in includes):
        raise ValueError(f"{name}: only library files (_*.lua) can be included, not {includes}")
    keys, argv = bindings(name, text.splitlines()[len(top):])
    if library and (keys or argv):
        raise ValueError(f"{name}: a library file binds no KEYS or ARGV")
    return ScriptSource(name, "\n".join([*(load(lib).source for lib in includes), text]), keys, argv,
                        frozenset((*keys, *argv)))


def bindings(name: str, body: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The locals bound to KEYS and ARGV by the block of ``local x = ARGV[i]`` lines at the top of ``body``."""
    bound: dict[str, list[tuple[int, str]]] = {"KEYS": [], "ARGV": []}
    at = 0
    while at < len(body) and (not body[at].strip() or _BINDING.match(body[at])):
        match = _BINDING.match(body[at])
        if match:
            local, table, index = match.groups()
            bound[table].append((int(index), local))
        at += 1
    for line in body[at:]:
        if _INDEXED.search(line.split("--", 1)[0]):
            raise ValueError(f"{name}: KEYS[i]/ARGV[i] used below the bindings at the top: {line.strip()!r}")
    names: dict[str, tuple[str, ...]] = {}
    for table, pairs in bound.items():
        if [i for i, _ in pairs] != list(range(1, len(pairs) + 1)):
            raise ValueError(f"{name}: {table} must be bound in order 1..n, found {[i for i, _ in pairs]}")
        names[table] = tuple(local for _, local in pairs)
    every = names["KEYS"] + names["ARGV"]
    if len(set(every)) != len(every):
        raise ValueError(f"{name}: every bound local needs its own name")
    return names["KEYS"], names["ARGV"]


class Script:
    """A script registered on a Redis client, called with keyword arguments named like its locals."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.spec = load(name)
        self._script = client.register_script(self.spec.source)

    def __call__(self, variadic_keys: Sequence[KeyT] = (), /, **named: EncodableT) -> Any:
        """Run the script. ``named`` holds every bound KEYS and ARGV local by name;
        ``variadic_keys`` is only for a script that binds no KEYS and takes any number of them."""
        keys, args = self._positions(variadic_keys, named)
        return self._script(keys=keys, args=args)

    def queue(self, pipe: redis.client.Pipeline, variadic_keys: Sequence[KeyT] = (), /, **named: EncodableT) -> None:
        """Queue a run of the script on ``pipe`` (its result comes with the pipeline's)."""
        keys, args = self._positions(variadic_keys, named)
        self._script(keys=keys, args=args, client=pipe)

    def _positions(self, variadic_keys: Sequence[KeyT], named: dict[str, EncodableT]) -> \
            tuple[list[KeyT], list[EncodableT]]:
        spec = self.spec
        if named.keys() != spec.names:
            missing = [n for n in (*spec.keys, *spec.argv) if n not in named]
            unexpected = sorted(set(named) - spec.names)
            raise TypeError(f"{spec.name}: missing {missing}, unexpected {unexpected}")
        if variadic_keys and spec.keys:
            raise TypeError(f"{spec.name} binds its KEYS by name: pass them as keywords")
        keys = list(variadic_keys) or [self._key(n, named[n]) for n in spec.keys]
        return keys, [named[n] for n in spec.argv]

    def _key(self, name: str, value: EncodableT) -> KeyT:
        if isinstance(value, str | bytes | memoryview):
            return value
        raise TypeError(f"{self.spec.name}: key {name} must be str or bytes, not {type(value).__name__}")
