"""Pieces shared by the Triton kernels in ``arl2rt.plugins``: raw-pointer launches and launch plans."""

from arl2rt.plugins.common.launch import (
    DevicePtr,
    KernelLaunch,
    as_kernel_arg,
    is_interpreted,
    pointer_type,
    run_launch,
    sub_buffer,
)

__all__ = ["DevicePtr", "KernelLaunch", "as_kernel_arg", "is_interpreted", "pointer_type", "run_launch", "sub_buffer"]
