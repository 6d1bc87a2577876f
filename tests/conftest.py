from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import vqkit
from vqkit.discovery import preserved_state

# The suite runs on 2-core CI machines: keep torch from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _plugins_loaded() -> None:
    # Lookups load plugins on their own; loading once up front makes a broken plugin fail here, first.
    vqkit.load_plugins()


@pytest.fixture
def preserved_plugins() -> Iterator[None]:
    """Whatever a test registers or loads is gone after it (see :func:`vqkit.testing.preserved_state`)."""
    with preserved_state():
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
