import pytest
import torch

from fl_medlego.lora import Factors


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


def random_factors(d_out: int, d_in: int, rank: int, gen: torch.Generator, dtype=torch.float32) -> Factors:
    """Non-zero factors (E too), so that a wrong merge cannot pass by accident."""
    return Factors(torch.randn(d_out, rank, generator=gen, dtype=dtype),
                   torch.rand(rank, generator=gen, dtype=dtype) + 0.5,
                   torch.randn(rank, d_in, generator=gen, dtype=dtype))


@pytest.fixture(autouse=True)
def site_state_in_tmp(tmp_path_factory, monkeypatch):
    """Sites keep their state in node-local files: in tests, never under the user's ~/.cache."""
    from fl_medlego.clients import state

    root = tmp_path_factory.mktemp("site-state")
    monkeypatch.setattr(state, "DEFAULT_ROOT", root)
    return root
