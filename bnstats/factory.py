"""User code named in one config key: ``package.module:function`` or ``path/to/file.py:function``.

A sweep may name a model factory (``model.arch``) and a dataset loader (``dataset``) from the user's own
code. This module is the one place that imports such a callable (:func:`resolve`), tells which keyword
arguments it accepts (:func:`parameters`), calls it with those (:func:`call`), and fingerprints the code it
comes from (:func:`provenance`: the sha256 of its source file and the git commit of that file's
repository), because a run's numbers depend on that code.

Specs are kept as the user wrote them (relative paths stay relative, so stored configs never name this
machine's folders). A relative file path is looked up from the working directory; a config loader that
knows the config file's folder rewrites a path found there relative to the working directory
(:func:`normalise`). A module spec is imported from ``sys.path``, then from the working directory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import ConfigError


def is_spec(text: Any) -> bool:
    """Whether ``text`` names user code (``module:function`` or ``file.py:function``; ``file:PATH`` names a
    data file)."""
    return (isinstance(text, str) and text.count(":") == 1 and all(text.split(":"))
            and not text.startswith("file:"))


def _split(spec: str) -> tuple[str, str]:
    target, name = spec.rsplit(":", 1)
    return target, name


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def normalise(spec: str, config_dir: str | Path | None) -> str:
    """``spec`` with a relative file path that exists only beside the config file rewritten relative to
    the working directory (a module spec, or a path found from the working directory, is kept)."""
    target, name = _split(spec)
    if not _is_file(target) or Path(target).is_absolute() or Path(target).is_file() or config_dir is None:
        return spec
    beside = Path(config_dir) / target
    if beside.is_file():
        return f"{os.path.relpath(beside)}:{name}"
    return spec


@lru_cache(maxsize=64)
def _load_file(path: str) -> Any:
    """Import a source file once per process, under a module name derived from its path."""
    p = Path(path).resolve()
    name = "bnstats_user_" + hashlib.sha256(str(p).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(p.parent)
    added = folder not in sys.path
    if added:  # so that the file can import its neighbours
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added:
            sys.path.remove(folder)
    return module


def _load_module(target: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != target.split(".")[0] or cwd in sys.path:
            raise
    sys.path.append(os.getcwd())  # a console script does not put the working directory on sys.path
    return importlib.import_module(target)


def resolve(spec: str, *, field: str) -> Callable[..., Any]:
    """The callable that ``spec`` names; a :class:`ConfigError` naming ``field`` if it cannot be had."""
    if not is_spec(spec):
        raise ConfigError(f"{field}: expected 'package.module:function' or 'path/to/file.py:function', got {spec!r}")
    target, name = _split(spec)
    try:
        if _is_file(target):
            if not Path(target).is_file():
                raise ConfigError(f"{field}: file not found: {target!r} (paths are relative to the working "
                                  f"directory or to the config file)")
            module = _load_file(target)
        else:
            module = _load_module(target)
    except ConfigError:
        raise
    except Exception as e:  # ImportError, SyntaxError, an exception raised at import ...
        raise ConfigError(f"{field}: cannot import {target!r} ({type(e).__name__}: {e})") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise ConfigError(f"{field}: {target!r} has no attribute {name!r}")
    if not callable(fn):
        raise ConfigError(f"{field}: {spec!r} is a {type(fn).__name__}, not a function or class")
    return fn


def parameters(fn: Callable[..., Any]) -> tuple[frozenset[str], bool]:
    """The keyword arguments ``fn`` accepts by name, and whether it takes ``**kwargs`` too."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return frozenset(), True
    names = frozenset(n for n, p in sig.parameters.items()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def accepts(fn: Callable[..., Any], name: str) -> bool:
    names, var_kw = parameters(fn)
    return var_kw or name in names


def required(fn: Callable[..., Any]) -> frozenset[str]:
    """Keyword-callable parameters without a default."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(n for n, p in sig.parameters.items() if p.default is p.empty
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def call(fn: Callable[..., Any], offered: dict[str, Any], *, field: str, spec: str) -> Any:
    """``fn(**kw)`` with the entries of ``offered`` that ``fn`` accepts; what it raises becomes a
    :class:`ConfigError` naming ``field`` and ``spec``."""
    names, var_kw = parameters(fn)
    kwargs = {k: v for k, v in offered.items() if var_kw or k in names}
    missing = sorted(required(fn) - set(kwargs))
    if missing:
        raise ConfigError(f"{field}: {spec} needs {', '.join(map(repr, missing))}, which bnstats does not "
                          f"provide; it provides: {', '.join(sorted(offered))}")
    try:
        return fn(**kwargs)
    except Exception as e:
        raise ConfigError(f"{field}: {spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) raised "
                          f"{type(e).__name__}: {e}") from None


@lru_cache(maxsize=64)
def _provenance_of(path: str) -> tuple[str, str]:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return digest, git_commit(Path(path).parent)


def provenance(fn: Callable[..., Any]) -> dict[str, str]:
    """``sha256`` of the source file that defines ``fn`` and ``git_commit`` of its repository ("" if it
    is not in one; ``-dirty`` when the repository has uncommitted changes)."""
    try:
        path = inspect.getsourcefile(inspect.unwrap(fn))
    except TypeError:  # a builtin or C extension
        path = None
    if not path or not Path(path).is_file():
        return {"sha256": "", "git_commit": ""}
    digest, commit = _provenance_of(str(Path(path).resolve()))
    return {"sha256": digest, "git_commit": commit}


def git_commit(folder: str | Path) -> str:
    """The commit of the git repository holding ``folder``, with ``-dirty`` for uncommitted changes to
    tracked files ("" where it is not in a repository or git is absent)."""
    try:
        sha = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha + ("-dirty" if dirty else "")
