from __future__ import annotations

import pytest
import torch

import vqkit

# The suite runs on 2-core CI machines: keep torch from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _plugins_loaded() -> None:
    vqkit.load_plugins()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
