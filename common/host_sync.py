"""No host synchronisation in a training step that does not log (train.forbid_sync=true).

On a GPU the host queues kernels ahead of the device. Anything that needs a device value on the
host makes it wait until the device has caught up, and the queue runs dry: a read (`.item()`,
`.tolist()`, `float(t)`, `if t:`, printing a tensor), an operation whose output shape depends on
the data (`nonzero`, boolean-mask indexing, `unique`), or a blocking copy from the host
(`torch.tensor(data, device=...)`, `.to(device)` without non_blocking). Such steps also rule out
CUDA graphs and stable compiled graphs. The loops therefore read device values only at log lines,
saves and every train.check_every steps (common/run.py StopFlag), and everything in between stays
on the device.

`forbid(device)` enforces it for one step:
- CUDA: torch.cuda.set_sync_debug_mode("error"), which sees every synchronising call at the
  runtime level, inside torch included.
- CPU: there is no device to wait for, so the same mistakes cost nothing here and would only show
  on a GPU. A TorchFunctionMode sees each torch call and raises when one of THIS project's files
  (not torch's own code: the CUDA mode covers that) makes one of the calls above. A read of a
  tensor that is host data by design (crop boxes from the loader) goes inside `allowed()`.
A violation raises HostSyncError naming the call and the line; the scripts exit with
common/run.py's EXIT_HOST_SYNC.
"""
import contextlib
import os
import sys
import threading

import torch
from torch.overrides import TorchFunctionMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
T = torch.Tensor
# reads of a tensor's value on the host
READS = {T.item, T.tolist, T.__bool__, T.__int__, T.__float__, T.__index__, T.__format__, T.__repr__,
         T.numpy, T.__array__, T.cpu}
# outputs whose shape depends on the values
DATA_DEPENDENT = {torch.nonzero, T.nonzero, torch.masked_select, T.masked_select, torch.unique, T.unique,
                  torch.argwhere, T.argwhere, torch.unique_consecutive}
# copies from the host: blocking unless non_blocking=True
CREATE_ON_DEVICE = {torch.tensor, torch.as_tensor}
_state = threading.local()
# torch's Python-level wrappers of the calls above: the caller is the frame that called them
_WRAPPERS = tuple(os.path.join("torch", f) for f in ("_tensor.py", "functional.py", "overrides.py", "_jit_internal.py"))


class HostSyncError(RuntimeError):
    """A step that does not log synchronised the host with the device (train.forbid_sync=true)."""


def _name(func):
    name = getattr(func, "__name__", str(func))
    return ("Tensor." if getattr(T, name, None) is func else "torch.") + name


def _bool_index(index):
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _moves_to_device(args, kwargs):
    """Tensor.to with a device and no non_blocking: a blocking copy when it crosses devices, and on
    the CPU, where it never does, the same call that would be one on a GPU. With a tensor
    argument (its device and dtype), only when the devices differ."""
    if kwargs.get("non_blocking", False) or (len(args) > 2 and isinstance(args[-1], bool) and args[-1]):
        return False
    if any(isinstance(a, torch.Tensor) and a.device != args[0].device for a in args[1:]):
        return True
    return kwargs.get("device") is not None or any(isinstance(a, (torch.device, str)) for a in args[1:])


def _violation(func, args, kwargs):
    if func in READS or func in DATA_DEPENDENT:
        return True
    if func in (T.__getitem__, T.__setitem__):
        return _bool_index(args[1])
    if func in CREATE_ON_DEVICE:
        return kwargs.get("device") is not None and not isinstance(args[0] if args else None, torch.Tensor)
    if func is T.new_tensor:
        return True   # copies Python data onto the tensor's device
    if func in (T.to, T.cuda):
        return func is T.cuda or _moves_to_device(args, kwargs)
    return False


class _ForbidMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not getattr(_state, "allowed", False) and _violation(func, args, kwargs):
            caller = sys._getframe(1)
            while caller.f_code.co_filename.endswith(_WRAPPERS):   # Python-level torch methods (__format__, unique)
                caller = caller.f_back
            path = caller.f_code.co_filename
            if path.startswith(REPO) and not path.endswith(os.path.join("common", "host_sync.py")):
                where = f"{os.path.relpath(path, REPO)}:{caller.f_lineno}"
                raise HostSyncError(f"{_name(func)} at {where} synchronises the host with the device in a step "
                                    f"that does not log (train.forbid_sync=true)")
        return func(*args, **kwargs)


@contextlib.contextmanager
def allowed():
    """Reads of host data by design (tensors that never left the CPU) inside a forbidden step."""
    before = getattr(_state, "allowed", False)
    _state.allowed = True
    try:
        yield
    finally:
        _state.allowed = before


@contextlib.contextmanager
def forbid(device, enabled=True):
    """Raise HostSyncError at any host-device synchronisation inside the block (see the module
    docstring for what counts on each device). A no-op when not enabled."""
    if not enabled:
        yield
        return
    if device.type == "cuda":
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        except RuntimeError as e:
            if "synchronizing" not in str(e) or isinstance(e, HostSyncError):
                raise
            raise HostSyncError(f"{str(e).splitlines()[0]} in a step that does not log (train.forbid_sync=true)") from e
        finally:
            torch.cuda.set_sync_debug_mode(before)
    else:
        with _ForbidMode():
            yield
