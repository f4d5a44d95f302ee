"""``oodbench`` entry point for subprocess tests, with a deliberately slowed-down method.

``slow-msp`` is MSP that sleeps ``$SLOW_SCORE`` seconds per batch; ``$SLOW_COMMIT`` makes the
store commit sleep before each group of frames it appends to the HDF5 file. Both only widen the time
window in which the tests kill the process.
"""

import os
import sys
import time

import ood_bench.store as store
from ood_bench.baselines import register_method
from ood_bench.baselines.posthoc import LogitScore


@register_method("slow-msp", formula="msp")
class SlowMSP(LogitScore):
    def score(self, model, images):
        time.sleep(float(os.environ.get("SLOW_SCORE", "0")))
        return super().score(model, images)


if os.environ.get("SLOW_COMMIT"):
    _append_frames = store._append_frames

    def _slow_append_frames(*args, **kwargs):
        time.sleep(float(os.environ["SLOW_COMMIT"]))
        return _append_frames(*args, **kwargs)

    store._append_frames = _slow_append_frames

if __name__ == "__main__":
    from ood_bench.cli import main

    main(sys.argv[1:], prog_name="oodbench")
