"""The FID Inception-v3 without TorchScript: weights read by the restricted unpickler, and the plain-PyTorch network,
both against the TorchScript reference (`torch.jit.load`, deprecated, called only here as the reference)."""

import io
import pickle
import struct
import warnings
import zipfile

import pytest
import torch

from hf_t2i.evaluation.fid import FIDInceptionV3
from hf_t2i.layers.inception import (
    FID_HELPER_PIP,
    FIDInceptionNetwork,
    fid_helper_available,
    fid_inception_weights_path,
    load_fid_inception,
    read_torchscript_weights,
)

from .conftest import requires_fid_weights


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def torchscript_reference():
    """The fid-helper network loaded by TorchScript (the reference; its loader is deprecated, hence the filter)."""
    if not fid_helper_available():
        pytest.skip(f"FID Inception weights missing: `{FID_HELPER_PIP}`")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(fid_inception_weights_path(), map_location="cpu").eval()


@requires_fid_weights
def test_weights_read_without_torchscript_equal_the_torchscript_state_dict(torchscript_reference):
    reference = torchscript_reference.state_dict()
    ours = read_torchscript_weights(fid_inception_weights_path())
    assert list(ours) == list(reference)  # same names, same order
    assert "net.layers.mixed_10.tower_1_mixed_conv_1.var" in ours
    for name, tensor in reference.items():
        assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape, name
        assert torch.equal(ours[name], tensor), name  # bit for bit


@requires_fid_weights
def test_network_features_match_torchscript(torchscript_reference):
    network = load_fid_inception()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 299, 299, generator=generator) * 2 - 1  # TF Inception range [-1, 1]
    with torch.no_grad():
        reference = torchscript_reference(images)
        features = network(images)
    assert features.shape == reference.shape == (3, 2048)
    max_diff = (features - reference).abs().max().item()
    assert max_diff <= 1e-4, f"max |diff| {max_diff:.3g}"
    assert features.std() > 0.01  # not a degenerate (e.g. all-zero) feature map


@requires_fid_weights
def test_network_is_frozen_and_stays_in_eval_mode():
    network = load_fid_inception().train()
    assert not any(module.training for module in network.modules())
    assert len(list(network.parameters())) == 0  # frozen: every weight is a buffer
    assert not FIDInceptionV3().train().net.training
    with pytest.raises(ValueError, match="images"):
        network(torch.rand(1, 1, 299, 299))


def test_network_names_its_bad_input():
    network = FIDInceptionNetwork()  # unloaded weights are enough to check shapes
    with pytest.raises(ValueError, match="images"):
        network(torch.zeros(1, 4, 299, 299))
    with pytest.raises(ValueError, match="299"):
        network(torch.zeros(1, 3, 100, 299))  # too small for the final 8 x 8 pool


def test_reader_rejects_what_is_not_a_torchscript_file(tmp_path):
    with pytest.raises(TypeError, match="path"):
        read_torchscript_weights(3)
    not_a_zip = tmp_path / "weights.pt"
    not_a_zip.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="path"):
        read_torchscript_weights(not_a_zip)
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("root/version", "3")
    with pytest.raises(ValueError, match="data.pkl"):
        read_torchscript_weights(tmp_path / "empty.zip")
    with pytest.raises(ValueError, match="path"):
        read_torchscript_weights(tmp_path / "missing.pt")


def _global_call_pickle(module: str, name: str, argument: str) -> bytes:
    """Protocol-2 pickle of `module.name(argument)`: the GLOBAL opcode, a one-tuple and REDUCE."""
    encoded = argument.encode()
    opcodes = [
        b"\x80\x02",  # PROTO 2
        b"c" + f"{module}\n{name}\n".encode(),  # GLOBAL module name
        b"X" + struct.pack("<I", len(encoded)) + encoded,  # BINUNICODE argument
        b"\x85",  # TUPLE1
        b"R",  # REDUCE: call it
        b".",  # STOP
    ]
    return b"".join(opcodes)


@pytest.mark.parametrize(("module", "name"), [("os", "system"), ("posix", "system"), ("builtins", "exec")])
def test_restricted_unpickler_refuses_code(tmp_path, module, name):
    marker = tmp_path / "pwned"
    payload = f"open({str(marker)!r}, 'w').close()" if name == "exec" else f"touch {marker}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("evil/data.pkl", _global_call_pickle(module, name, payload))
        archive.writestr("evil/version", "3")
    path = tmp_path / "evil.pt"
    path.write_bytes(buffer.getvalue())
    assert pickle.loads(_global_call_pickle("builtins", "str", "x")) == "x"  # the helper builds a working call
    with pytest.raises(pickle.UnpicklingError, match=rf"refused global '{module}\.{name}'"):
        read_torchscript_weights(path)
    assert not marker.exists()  # nothing ran
