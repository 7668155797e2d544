"""An autouse fixture for tests on tiny graphs: one torch thread (not a test module).

Import it into a test module (``from torch_threads import one_torch_thread  # noqa: F401``). On
a loaded 2-core machine more threads spin: a 200-node sparse product took 36 ms with 2 threads
and under 2 ms with one."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
