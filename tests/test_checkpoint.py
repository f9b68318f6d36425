import json
import pickle
import struct

import pytest
import torch

from denoise_core.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from denoise_core.models import create_model


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    m = create_model("seed")
    p = tmp_path / "seed.safetensors"
    save_checkpoint(p, m, {"noise": "gaussian:25", "data": "test", "steps": 12, "psnr": {"val": 30.5}})
    return p, m


def test_round_trip_weights_and_card(ckpt):
    p, m = ckpt
    c = load_checkpoint(p)
    assert c.arch == "seed" and c.arch_args == {}
    assert c.card["noise"] == "gaussian:25" and c.card["steps"] == 12 and c.card["psnr"] == {"val": 30.5}
    rebuilt = c.build()
    for k, v in m.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v)
    assert read_metadata(p)["format_version"] == "1"


def test_arch_args_round_trip(tmp_path):
    m = create_model("unet", widths=(8, 16, 32), mid_blocks=1)
    p = tmp_path / "u.safetensors"
    save_checkpoint(p, m)
    net = load_checkpoint(p).build()
    assert sum(x.numel() for x in net.parameters()) == sum(x.numel() for x in m.parameters())


def _expect(path, *words):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_missing_and_empty(tmp_path):
    _expect(tmp_path / "nope.safetensors", "no such file")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _expect(tmp_path / "empty.safetensors", "empty")


def test_truncated(ckpt, tmp_path):
    p, _ = ckpt
    data = p.read_bytes()
    for cut in (5, 40, len(data) - 100):
        t = tmp_path / f"cut{cut}.safetensors"
        t.write_bytes(data[:cut])
        _expect(t, "truncated")


def test_corrupt_header(ckpt, tmp_path):
    p, _ = ckpt
    data = bytearray(p.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8:8 + n] = b"{" * n
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    _expect(bad, "corrupt")


class _Boom:
    def __reduce__(self):
        return (exec, ("open('/tmp/denoise_pwned','w').write('x')",))


def test_pickle_is_refused_and_never_executed(tmp_path):
    import os
    target = "/tmp/denoise_pwned"
    if os.path.exists(target):
        os.remove(target)
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"w": _Boom()}, f)
    _expect(p, "pickle", "refusing")
    torch_file = tmp_path / "evil_torch.pth"
    torch.save({"w": torch.zeros(2)}, torch_file)
    _expect(torch_file, "refusing")
    assert not os.path.exists(target)


def test_wrong_architecture_diff_is_readable(tmp_path):
    from safetensors.torch import save_file
    m = create_model("seed")
    sd = {k: v for k, v in m.state_dict().items()}
    sd["extra.weight"] = torch.zeros(1)
    del sd["body.0.bias"]
    p = tmp_path / "mismatch.safetensors"
    save_file(sd, p, metadata={"format": "denoise-cnn", "format_version": "1", "arch": "seed", "arch_args": "{}"})
    c = load_checkpoint(p)
    with pytest.raises(CheckpointError) as e:
        c.build()
    msg = str(e.value)
    assert "missing keys" in msg and "body.0.bias" in msg and "unexpected keys" in msg and "extra.weight" in msg

    save_file(create_model("fast").state_dict(), tmp_path / "u.safetensors",
              metadata={"format": "denoise-cnn", "format_version": "1", "arch": "seed", "arch_args": "{}"})
    with pytest.raises(CheckpointError, match="do not match architecture 'seed'"):
        load_checkpoint(tmp_path / "u.safetensors").build()


def test_unknown_architecture_and_foreign_files(tmp_path):
    from safetensors.torch import save_file
    t = {"w": torch.zeros(2)}
    save_file(t, tmp_path / "a.safetensors", metadata={"format": "denoise-cnn", "format_version": "1",
                                                      "arch": "vit-huge", "arch_args": "{}"})
    msg = _expect(tmp_path / "a.safetensors", "vit-huge", "valid names")
    assert "seed" in msg
    save_file(t, tmp_path / "b.safetensors")
    _expect(tmp_path / "b.safetensors", "format")
    save_file(t, tmp_path / "c.safetensors", metadata={"format": "denoise-cnn", "format_version": "99",
                                                      "arch": "seed", "arch_args": "{}"})
    _expect(tmp_path / "c.safetensors", "version")
    (tmp_path / "d.safetensors").write_text(json.dumps({"not": "weights"}))
    _expect(tmp_path / "d.safetensors")


def test_nan_weights_rejected(tmp_path):
    m = create_model("seed")
    with torch.no_grad():
        m.body[0].weight[0, 0, 0, 0] = float("nan")
    p = tmp_path / "nan.safetensors"
    save_checkpoint(p, m)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(p).build()
