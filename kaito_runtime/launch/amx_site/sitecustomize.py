"""Asks Linux for permission to use Intel AMX tiles, at the start of every vLLM process.

The launcher puts this folder on vLLM's PYTHONPATH for CPU runs on hosts that advertise AMX.
vLLM's CPU attention kernel uses AMX for bfloat16 without asking the kernel first
(arch_prctl ARCH_REQ_XCOMP_PERM, Linux >= 5.16), and Linux answers an unpermitted AMX instruction
with SIGILL: the engine dies on the first request. The permission is per process and is cleared
by exec, so each of vLLM's processes must ask for itself, which is what this file does. It does
nothing where the call is unknown or refused.
"""

import ctypes
import sys

_SYS_ARCH_PRCTL = 158  # x86-64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

if sys.platform == "linux":
    try:
        ctypes.CDLL(None, use_errno=True).syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)
    except (OSError, AttributeError):
        pass
