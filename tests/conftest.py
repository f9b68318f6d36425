import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def photo_rgb() -> np.ndarray:
    """A real photo (scikit-image's astronaut, allowed in tests), 256x256 uint8 crop."""
    from skimage import data
    return np.ascontiguousarray(data.astronaut()[96:352, 128:384])


@pytest.fixture(scope="session")
def photo_coffee() -> np.ndarray:
    from skimage import data
    return np.ascontiguousarray(data.coffee()[50:306, 150:406])
