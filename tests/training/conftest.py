import pytest

from .training_toy import reset_accelerate_state


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test starts like a new process: Accelerate keeps process-wide state between Accelerators."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()
