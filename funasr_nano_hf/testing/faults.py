"""Test hook: deterministic fault injection into a real training process. A no-op unless the environment
variable ``FUNASR_NANO_HF_FAULT`` is set; nothing in normal use sets it.

    FUNASR_NANO_HF_FAULT=<point>:<n>                   SIGKILL this process the n-th time it reaches <point>
    FUNASR_NANO_HF_FAULT=<point>:<n>:memory_cap=<MiB>  instead, cap its address space (RLIMIT_AS) at its
                                                       current size + <MiB> there (a small device, simulated)
    FUNASR_NANO_HF_FAULT=<point>:<n>:enospc            instead, raise the OSError(ENOSPC) a write raises on a
                                                       full disk there (a full disk, simulated)

Points (where the training package calls `fault_point`):

* ``step_begin`` -- a training step's start, before the forward pass (where a memory cap goes)
* ``step``      -- inside a training step, after backward, before the optimizer update
* ``eval``      -- inside an evaluation, after the loss pass, before CER decoding
* ``save``      -- inside a checkpoint save, all files written to the staging folder, before it is published
* ``average``   -- inside the n-best averaging, after the first averaged file is written
* ``epoch_end`` -- between epochs (the Trainer's ``on_epoch_end``)

The kill is ``os.kill(os.getpid(), SIGKILL)``: the same uncatchable end as ``kill -9`` from outside, at a point
a test can name. See tests/fault/README.md.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
from collections import Counter

ENV = "FUNASR_NANO_HF_FAULT"
POINTS = ("step_begin", "step", "eval", "save", "average", "epoch_end")
_SPEC = re.compile(r"^(?P<point>\w+):(?P<n>\d+)(?::memory_cap=(?P<cap>\d+)|:(?P<enospc>enospc))?$")
_reached: Counter = Counter()


def _address_space_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[0]) * resource.getpagesize()


def fault_point(point: str) -> None:
    """Count `point`; act when ``FUNASR_NANO_HF_FAULT`` names it and this is its n-th time."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    match = _SPEC.match(spec)
    if match is None or match["point"] not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: expected <point>:<n>[:memory_cap=<MiB>|:enospc] with point one of {POINTS}")
    if match["point"] != point:
        return
    _reached[point] += 1
    if _reached[point] != int(match["n"]):
        return
    if match["enospc"]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if match["cap"] is None:
        os.kill(os.getpid(), signal.SIGKILL)
    limit = _address_space_bytes() + int(match["cap"]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
