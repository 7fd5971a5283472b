"""What a measurement depends on: the CPU (with its generation), its cores, how busy it is, and the code."""

import os
import platform
import subprocess


def cpu_id():
    """The CPU's name with its family and model, e.g. `AMD EPYC (family 25, model 17)`.

    Virtual machines often report a bare vendor name; family and model tell CPU
    generations apart, whose matmul peaks can differ by 2x.
    """
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():  # the first processor is enough
                    break
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def load_average():
    """The one-minute load average, rounded; None where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# The variables that pin the CPU thread pools (`runtime.performance.thread_environment` sets them).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "XLA_FLAGS",
)


def machine_info():
    """The CPU, its cores, the load average now and the thread variables set (none: all cores).

    Recorded beside every timing and result: the thread count changes the speed and,
    through the order of its sums, the last bits of every number a run computes.
    """
    threads = {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}
    return dict(cpu=cpu_id(), cores=os.cpu_count(), load_start=load_average(), threads=threads)


def code_commit():
    """The short commit of the git checkout in the current folder, or "" outside one (an installed package)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""
