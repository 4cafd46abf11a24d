"""Pieces shared by the Triton kernels in ``arl2rt.plugins``: raw-pointer launches and launch plans."""

from arl2rt.plugins.common.launch import (
    INPUT_DTYPES,
    SUPPORTED_DIMS,
    DevicePtr,
    KernelLaunch,
    KernelRef,
    as_kernel_arg,
    check_kernel_sizes,
    interpreter_enabled,
    is_interpreted,
    kernels_support,
    pointer_type,
    run_launch,
    sub_buffer,
)

__all__ = [
    "INPUT_DTYPES",
    "SUPPORTED_DIMS",
    "DevicePtr",
    "KernelLaunch",
    "KernelRef",
    "as_kernel_arg",
    "check_kernel_sizes",
    "interpreter_enabled",
    "is_interpreted",
    "kernels_support",
    "pointer_type",
    "run_launch",
    "sub_buffer",
]
