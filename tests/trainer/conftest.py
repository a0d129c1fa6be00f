import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """On a loaded 2-core machine two OpenMP threads wait on each other (a 2 s test took 77 s);
    one thread is steady, and in-process results stay comparable with subprocess runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
