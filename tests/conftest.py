import os

import pytest
import torch

# Tests must never write to the developer's tracking store.
os.environ.pop("MLFLOW_TRACKING_URI", None)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def isolated_store(tmp_path, monkeypatch):
    """An empty project folder as cwd, so the default sqlite store lands in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
