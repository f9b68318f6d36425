from typing import Any, cast
import pytest
import torch

from denoise_core.models import UnknownModelError, create_model, list_models


def test_registry_lists_architectures():
    assert {"seed", "unet", "fast"} <= set(list_models())


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownModelError) as e:
        create_model("resnet9000")
    msg = str(e.value)
    assert "resnet9000" in msg and "seed" in msg and "unet" in msg and "fast" in msg


def test_seed_is_the_original_three_layer_net():
    m = create_model("seed")
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    relus = [x for x in m.modules() if isinstance(x, torch.nn.ReLU)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (1, 1)), (32, 32, (3, 3), (1, 1)), (32, 3, (3, 3), (1, 1))]
    assert len(relus) == 2
    assert sum(p.numel() for p in m.parameters()) == 11011
    x = torch.rand(1, 3, 17, 23)
    assert m(x).shape == x.shape  # same padding, any size


@pytest.mark.parametrize("name", ["unet", "fast"])
def test_unet_shapes_and_identity_at_init(name):
    m = create_model(name).eval()
    assert m.size_multiple == 8
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape
    assert torch.equal(y, x)  # zero-initialised head: an untrained net passes the input through


def test_arch_args_are_recorded():
    m = create_model("unet", widths=(8, 16, 32))
    assert m.arch_name == "unet" and m.arch_args == {"widths": (8, 16, 32)}


def test_grown_unet_starts_as_the_smaller_trained_net():
    """Deepening a trained net (scripts/train_shipped.py --grow) keeps what it learned: before any
    step, the grown net's output equals the small net's."""
    torch.manual_seed(0)
    small = create_model("unet", widths=(8, 16, 32)).eval()
    for p in small.parameters():
        p.data.normal_(0, 0.1)  # stand-in for trained weights (the real ones start with a zero head)
    big: Any = create_model("unet", widths=(8, 16, 32), enc_blocks=(2, 3), mid_blocks=3, dec_blocks=(3, 2)).eval()
    big.load_state_dict(big.grow_from(small.state_dict()))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(big(x), small(x), atol=1e-6)
        assert not torch.equal(small(x), x)
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())


def test_grow_rejects_weights_of_another_width():
    other = create_model("unet", widths=(8, 16, 32)).state_dict()
    with pytest.raises(ValueError, match=r"intro.weight \(8, 12, 3, 3\) does not fit this net \(32, 12, 3, 3\)"):
        cast(Any, create_model("unet")).grow_from(other)


def test_unet_defaults_still_build_weights_saved_with_them():
    """A checkpoint stores only the arguments it was built with ({} for a plain `--arch unet`), so
    changing these defaults would make users' trained weights unloadable."""
    m = create_model("unet")
    assert sum(p.numel() for p in m.parameters()) == 1_012_204
    assert [len(getattr(m, s)) for s in ("enc1", "enc2", "mid", "dec2", "dec1")] == [1, 2, 2, 2, 1]
