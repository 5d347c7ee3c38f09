import numpy as np
import pytest

import declcnn


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def restore_threads():
    """Tests that set the kernels' thread count give it back to the default afterwards."""
    yield
    declcnn.set_num_threads(None)
