"""lima_jax: LIMA's supervised fine-tuning recipe for LLaMA models, in JAX.

Importing it sets up two things before any lima_jax module imports JAX, TensorStore or gcsfs: a quiet
TPU probe off a TPU (`quiet_tpu_probe`), and the Cloud Storage emulator when STORAGE_EMULATOR_HOST
says so.
"""
from __future__ import annotations

import glob
import os

from lima_jax.storage.emulator import use_storage_emulator

# Google's PCI vendor id and the device ids of its TPU chips (as in jax._src.hardware_utils). Other
# Google devices (gVNIC network cards on every GCE VM, for one) share the vendor id.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}

# Variables that describe a TPU slice to libtpu: whoever set one of them means it, so leave them be.
_SLICE_VARS = ("TPU_ACCELERATOR_TYPE", "TPU_HOST_BOUNDS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
               "TPU_PROCESS_BOUNDS", "TPU_CHIPS_PER_PROCESS_BOUNDS", "JAX_FORCE_TPU_INIT")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def tpu_attached() -> bool:
    """Whether this machine may have a TPU: a TPU PCI device, or the device nodes TPU drivers create.

    Errs towards yes (an accel or VFIO node of other hardware counts): a wrong yes only leaves the
    probe's noise, a wrong no would mis-describe a real slice to libtpu.
    """
    # /dev/accel* for TPU v2-v4, /dev/vfio/<group> for v5e onwards (and other VFIO passthrough).
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        if _read(vendor) == _GOOGLE_PCI_VENDOR and _read(os.path.join(os.path.dirname(vendor), "device")) in _TPU_PCI_DEVICES:
            return True
    return False


def quiet_tpu_probe() -> bool:
    """Describes a lone host to libtpu when no TPU is attached; returns whether it did.

    With libtpu installed, JAX probes for a TPU at its first backend lookup and whenever AOT loads the
    TPU plugin; off a TPU VM libtpu then prints "Failed to find host bounds ..." and a trace before
    JAX falls back. Described as a lone host (`TPU_HOST_BOUNDS=1,1,1`, `TPU_WORKER_HOSTNAMES=localhost`),
    its probe finds nothing without a word, and nothing else changes: JAX still picks its backends, and
    topologies compile as before. (JAX_PLATFORMS=cpu would not do: AOT loads libtpu whatever the
    platforms, and an explicit list makes JAX fail loudly where it would fall back.) Costs a few file
    reads; must run before JAX loads libtpu (called below, at import).
    """
    if any(v in os.environ for v in _SLICE_VARS) or tpu_attached():
        return False
    os.environ["TPU_HOST_BOUNDS"] = "1,1,1"
    os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
    return True


# Before any lima_jax module imports JAX: without a TPU, keep libtpu's probe off stderr.
quiet_tpu_probe()
# Before TensorStore or gcsfs is imported: with STORAGE_EMULATOR_HOST set, all of gs:// goes there.
use_storage_emulator()

__version__ = "0.1.0"
