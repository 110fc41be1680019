import os

import pytest
import torch

# Two cores on CI: one intra-op thread per test process keeps timings and runs stable.
torch.set_num_threads(int(os.environ.get("SCIML_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
