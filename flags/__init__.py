"""absl flag definitions for run.py, grouped by concern. Importing this package defines them.

Names follow the SimCLR TF2 codebase where a SimCLR user would look for them. Defaults are
the offline default job: SogCLR pretraining on Fashion-MNIST (Debian's files) on CPU.
"""

from flags import (  # noqa: F401
    bimodal, data, hardware, loss, model, modes, optimizer, reliability, state)
