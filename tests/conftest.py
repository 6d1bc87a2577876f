from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import vqkit
from vqkit.discovery import preserved_state

# The suite runs on 2-core CI machines: keep torch from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread; on a busy 2-core machine a second one spends its time
    spin-waiting (measured: 150 prior steps took 0.7 s of CPU on one thread, 28 s on two). Modules of tiny
    models use it for every test with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
