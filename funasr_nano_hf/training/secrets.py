"""Credentials never reach an artefact: training arguments pickle without their secrets, dumps redact them.

transformers pickles the whole `TrainingArguments` into every checkpoint and model folder (`training_args.bin`,
loaded back on resume), `--hub_token` included, and `push_to_hub` uploads those folders. `protect_secrets(args)`
makes the object pickle as its own class with every secret field set to None -- the live object keeps the token,
so uploads still authenticate -- and `redact` replaces secret values in the dicts we write (`config.yaml`).
A secret field is any field named like a credential (`*_token`, `*_key`, `*password*`, `*secret*`);
environment variables named so are never written by this package at all.
Hand-written: transformers redacts only `*_token` fields in `to_dict()` and nothing in the pickle.
"""

from __future__ import annotations

import copy
import copyreg
import dataclasses
import re
from typing import Any

# A credential's name: hub_token, push_to_hub_token, api_key, wandb_key, db_password, client_secret, ...
# (not max_tokens / num_tokens: plural counts are no secrets).
SECRET_NAME = re.compile(r"(^|_)(token|key|api_key)$|password|passwd|secret", re.IGNORECASE)
REDACTED = "<redacted>"


def is_secret_name(name: str) -> bool:
    """True for a field or variable named like a credential."""
    return bool(SECRET_NAME.search(name))


def secret_fields(obj: Any) -> dict[str, str]:
    """The secret-named fields of a dataclass instance that hold a non-empty string."""
    names = [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else list(vars(obj))
    return {
        name: value for name in names if is_secret_name(name) and isinstance(value := getattr(obj, name, None), str)
    }


def redact(tree: Any) -> Any:
    """A copy of a dict/list tree with the values of secret-named keys replaced by `REDACTED` (None stays None)."""
    if isinstance(tree, dict):
        return {
            key: (REDACTED if value is not None else None) if is_secret_name(str(key)) else redact(value)
            for key, value in tree.items()
        }
    if isinstance(tree, (list, tuple)):
        return type(tree)(redact(value) for value in tree)
    return tree


class _SecretFreePickling:
    """Mixed into the live arguments' class: pickles as the original class with secrets set to None, deep-copies
    whole (copies made in memory keep working credentials)."""

    _pickled_class: type

    def __reduce_ex__(self, protocol: int):
        state = {name: (None if is_secret_name(name) else value) for name, value in vars(self).items()}
        # The stdlib's own reconstructor (object.__new__(cls) + __dict__ update): the pickle names only the
        # original class, so it loads wherever that class does (torch.save uses protocol 2).
        return copyreg._reconstructor, (self._pickled_class, object, None), state

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(vars(self), memo))
        return clone


_PROTECTED_CLASSES: dict[type, type] = {}


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the values of secret-named options (``--hub_token X``, ``--hub_token=X``) replaced by
    `REDACTED`, for logs."""
    redacted: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            redacted.append(REDACTED)
            hide_next = False
        elif arg.startswith("-") and is_secret_name(arg.lstrip("-").split("=", 1)[0].replace("-", "_")):
            if "=" in arg:
                redacted.append(f"{arg.split('=', 1)[0]}={REDACTED}")
            else:
                redacted.append(arg)
                hide_next = True
        else:
            redacted.append(arg)
    return redacted


def protect_secrets(args: Any) -> Any:
    """Make `args` (a `TrainingArguments` or any dataclass instance) pickle without its secrets, in place.

    The object keeps its values and its behaviour (its class becomes a subclass of its own class); a pickle of it
    (`torch.save`) holds the ORIGINAL class with the secret fields None, so `torch.load(weights_only=False)` gives
    a normal object, as transformers expects on resume. Idempotent; returns `args`.
    """
    cls = type(args)
    if isinstance(args, _SecretFreePickling):
        return args
    if cls not in _PROTECTED_CLASSES:
        _PROTECTED_CLASSES[cls] = type(cls.__name__, (_SecretFreePickling, cls), {"_pickled_class": cls})
    args.__class__ = _PROTECTED_CLASSES[cls]
    return args


__all__ = ["REDACTED", "is_secret_name", "protect_secrets", "redact", "redact_argv", "secret_fields"]
