"""`python tests/fsdp_cpu.py run.py ARGS`, launched by `accelerate launch` with an FSDP config:
FSDP2 on CPU processes, which accelerate itself only applies on accelerators (on CPUs it
quietly runs data parallel instead). torch's FSDP2 runs on gloo, so sharded saving, gathering
and generation are tested here with no GPU; everything but the distributed type is accelerate's
own code path."""

from __future__ import annotations

import runpy
import sys

import accelerate.state
from accelerate.utils import DistributedType

_init = accelerate.state.AcceleratorState.__init__


def _init_fsdp_on_cpu(self, *args, **kwargs) -> None:
    _init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate.state.AcceleratorState.__init__ = _init_fsdp_on_cpu

if __name__ == "__main__":
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
