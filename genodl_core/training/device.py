"""Choosing the torch device and numeric precision of a trial."""

from __future__ import annotations

import os
from typing import Any, MutableMapping

import torch

from genodl_core.errors import InfrastructureError


def pin_rocm_devices(env: MutableMapping[str, str] = os.environ) -> None:
    """On ROCm builds of torch, let ROCR_VISIBLE_DEVICES alone choose the GPU.

    Workflow executors pin a worker to GPU ``i`` by setting both ``ROCR_VISIBLE_DEVICES=i`` and
    ``CUDA_VISIBLE_DEVICES=i``. ROCm applies the first, renumbering the one remaining GPU as 0,
    and then the second, which for ``i > 0`` hides it: the trial would silently see no GPU.
    Must run before torch first touches the GPU in this process.
    """
    if getattr(torch.version, "hip", None) and env.get("ROCR_VISIBLE_DEVICES"):
        for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
            env.pop(name, None)


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible (CUDA_VISIBLE_DEVICES is honoured by torch), else 'cpu'.

    Raises
    ------
    InfrastructureError
        ``device='cuda'`` on a machine without a usable GPU (a placement problem: a retry on
        another node may succeed, so it is not classed as a deterministic failure).
    """
    pin_rocm_devices()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise InfrastructureError(
            "device='cuda' but torch sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
            "use device='auto' or 'cpu', or run on a GPU node")
    return requested


def resolve_precision(requested: str, device: str) -> str:
    """'auto' -> 'bf16' on CUDA (bf16 autocast, fp32 master weights) and 'fp32' on CPU.

    On CPU, fp32 (bit-for-bit deterministic for a thread count) unless the spec asks for
    'bf16' explicitly, which needs a CPU with native bf16 arithmetic.

    Raises
    ------
    SpecError
        'bf16' on a CPU without native bf16 (:func:`genodl_core.training.cpu.check_bf16`).
    """
    if device != "cuda":
        if requested == "bf16":
            from genodl_core.training.cpu import check_bf16

            check_bf16()
            return "bf16"
        return "fp32"
    return "bf16" if requested == "auto" else requested


def device_info(device: str) -> dict[str, Any]:
    """What the record says about where the trial ran."""
    info: dict[str, Any] = {"device": device,
                            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if device == "cuda":
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(gpu_index=index, gpu_name=props.name,
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_uuid=str(getattr(props, "uuid", "")), cuda=torch.version.cuda)
    else:
        from genodl_core.training.cpu import malloc_state

        info.update(torch_threads=torch.get_num_threads(),
                    omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), malloc=malloc_state())
    return info
