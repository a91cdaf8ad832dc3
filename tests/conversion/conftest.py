"""Conversion tests import the scripts in `conversion_scripts/` as modules. Shared fixtures: `fake_hub` (the fake Hub
of tests/test_hub_cards.py) and `dvae_state_files` (a tiny OpenAI-layout dVAE)."""

import sys
from pathlib import Path

import pytest
import torch

from ..test_hub_cards import fake_hub  # noqa: F401 (a fixture for the --push-to-hub tests)


SCRIPTS = Path(__file__).resolve().parents[2] / "conversion_scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))


@pytest.fixture
def dvae_state_files(tmp_path):
    """A tiny OpenAI-layout dVAE as plain state dicts (the converter accepts these as well as whole pickles)."""
    from hf_t2i import DalleDVAE, DalleDVAEConfig

    torch.manual_seed(0)
    model = DalleDVAE(DalleDVAEConfig(image_size=16, hidden_size=8, vocab_size=16, channel_multipliers=[1, 2]))
    paths = []
    for half in ("encoder", "decoder"):
        state = {
            k.removeprefix(f"{half}.").replace(".weight", ".w").replace(".bias", ".b"): v
            for k, v in model.state_dict().items()
            if k.startswith(half)
        }
        path = tmp_path / f"{half}.pkl"
        torch.save(state, path)
        paths.append(path)
    return paths
