"""The station's core: everything without Qt (acquisition, data, models, training, inference, storage).

OpenMP threads that spin while waiting make torch collapse when another process holds a core (measured
here: EfficientNet-Lite0 at 256x256 took 556 ms instead of 26-31 ms with 2 threads while a training run
used one of the 2 cores). A station retrains beside the live line, so worker threads sleep instead of spin.
This must be set before torch loads OpenMP, hence here; an explicit setting in the environment wins.
"""
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
