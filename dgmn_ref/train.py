"""``dgmn_ref.train``: the training API in one import, and ``python -m dgmn_ref.train``.

The code lives in :mod:`dgmn_ref.training`; this module names what notebooks and scripts
use (``from dgmn_ref.train import TrainConfig, train, ...``) and runs ``dgmn-ref train``
when executed, which is what ``torchrun -m dgmn_ref.train`` needs.
"""

from dgmn_ref.training import *  # noqa: F403
from dgmn_ref.training import __all__  # noqa: F401

if __name__ == "__main__":
    from dgmn_ref.cli import train_main

    raise SystemExit(train_main())
