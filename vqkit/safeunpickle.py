"""Reading someone else's pickled checkpoint (a Lightning ``.ckpt``, a ``pytorch_model.bin``) without running
its code.

Unpickling calls whatever functions the file names, so a checkpoint is code, not data, until checked. Here the
unpickler resolves a short list of globals to the real thing (torch's tensor rebuilders, OrderedDict, plain
containers, dtypes, numpy scalars), turns the classes of known training frameworks (Lightning callbacks and
hyper-parameters, OmegaConf configs, argparse namespaces: training state that sits beside the weights) into
inert placeholders whose construction runs none of their code, and refuses any other global with one line
naming it, before anything is called. Only the tensors are kept.
"""

from __future__ import annotations

import _compat_pickle
import os
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from vqkit.errors import ModelFileError

# The globals a checkpoint of tensors needs, resolved to the real objects (none runs code a file chooses).
_REAL = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch", "device"),
    ("collections", "defaultdict"),
    ("builtins", "set"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "str"),
    ("builtins", "bool"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("_codecs", "encode"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}
# Training state of these frameworks comes back as placeholders: the module is never imported.
_INERT_PREFIXES = (
    "pytorch_lightning",
    "lightning",
    "lightning_fabric",
    "omegaconf",
    "argparse",
    "pathlib",
    "torch.optim",
    "taming",
    "ldm",
    "main",
)


class RefusedCheckpoint(ModelFileError):
    """A pickled checkpoint that names code to run while loading; nothing of it was run."""


class Inert(dict):
    """Stands for an object of a training framework: accepts any construction and state, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __hash__(self) -> int:  # used as a dict key (Lightning keys callback state by class)
        return id(self)


def _inert(module: str, name: str) -> type:
    return type(name, (Inert,), {"__module__": f"vqkit.safeunpickle.inert.{module}"})


def _resolve(module: str, name: str, where: str) -> Any:
    if (module, name) in _REAL:
        target = __import__(module, fromlist=[name])
        return getattr(target, name)
    if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):  # no lazy import by name
        return vars(torch)[name]
    if module.split(".")[0] in _INERT_PREFIXES or module in _INERT_PREFIXES:
        return _inert(module, name)
    raise RefusedCheckpoint(
        f"{where}: refused: the checkpoint would call {module}.{name} while loading (code, not data); "
        f"nothing of it was run"
    )


def _pickle_module(where: str) -> types.ModuleType:
    """A stand-in for the ``pickle`` module whose unpickler resolves globals through :func:`_resolve`."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # protocol 2 pickles name globals as Python 2 did (__builtin__.list); read them as Python 3's
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            return _resolve(module, name, where)

    def load(file: Any, **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType("vqkit_restricted_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.__name__ = "pickle"  # torch checks dill by name; this is no dill
    return module


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The unpickled contents of a torch checkpoint, read with the restricted unpickler (tensors on the CPU)."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"no such checkpoint file: {p}")
    try:
        return torch.load(p, map_location="cpu", pickle_module=_pickle_module(str(p)), weights_only=False)
    except RefusedCheckpoint:
        raise
    except Exception as exc:  # truncated, not a torch file, or a global placeholders cannot stand for
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"{p} is not a readable torch checkpoint ({first})") from None


def tensors_of(data: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: its ``state_dict`` (Lightning) or the checkpoint itself when it is one."""
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ModelFileError(f"{where}: the checkpoint holds no state_dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(f"{where}: the checkpoint holds no tensors")
    return tensors
