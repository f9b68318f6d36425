from typing import Any, cast
import json
import pickle
import struct

import pytest
import torch

from denoise_core.inference.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
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
    msg = _expect(p, "missing keys", "body.0.bias", "unexpected keys", "extra.weight")
    assert msg.count("\n") == 0

    save_file(create_model("fast").state_dict(), tmp_path / "u.safetensors",
              metadata={"format": "denoise-cnn", "format_version": "1", "arch": "seed", "arch_args": "{}"})
    _expect(tmp_path / "u.safetensors", "do not match architecture 'seed'")


def test_build_still_checks_weights_given_in_memory():
    from denoise_core.inference.checkpoint import Checkpoint
    sd = dict(create_model("seed").state_dict())
    del sd["body.0.bias"]
    with pytest.raises(CheckpointError, match="missing keys.*body.0.bias"):
        Checkpoint("seed", {}, sd).build()


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
        cast(Any, m).body[0].weight[0, 0, 0, 0] = float("nan")
    p = tmp_path / "nan.safetensors"
    save_checkpoint(p, m)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(p).build()


# ---------------------------------------------------------------------- hostile headers and metadata

def _raw(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize("header,words", [(b"[]", ("the JSON is an array",)), (b"null", ("the JSON is null",)),
                                          (b'"x"', ("the JSON is a string",)), (b"7", ("the JSON is a number",)),
                                          (b'{"__metadata__": []}', ("__metadata__",)),
                                          (b'{"w": 3}', ("malformed",)),
                                          (b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
                                           ("malformed",)),
                                          (b'{"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}',
                                           ("dtype", "floating point")),
                                          (b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}',
                                           ("offsets do not fit",))])
def test_header_that_is_not_a_tensor_map_is_named(tmp_path, header, words):
    _expect(_raw(tmp_path / "h.safetensors", header, b"\0" * 16), *words)


def _seed_with_args(tmp_path, arch_args, arch="seed", weights=None):
    from safetensors.torch import save_file
    sd = weights if weights is not None else create_model(arch).state_dict()
    p = tmp_path / "a.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, p,
              metadata={"format": "denoise-cnn", "format_version": "1", "arch": arch, "arch_args": arch_args})
    return p


@pytest.mark.parametrize("arch,args,words", [
    ("seed", '{"width": -5}', ("width=-5", "1..1024")),
    ("seed", '{"width": 6000}', ("width=6000", "out of range")),
    ("seed", '{"width": 1e9}', ("width=1000000000.0",)),
    ("seed", '{"width": "32"}', ("width=\"32\"",)),
    ("unet", '{"mid_blocks": 1000000}', ("mid_blocks=1000000", "0..64")),
    ("unet", '{"widths": [8]}', ("widths=[8]", "list of 3 integers")),
    ("unet", '{"level_input": 1}', ("level_input=1", "true or false")),
    ("seed", '{"in_channels": 4}', ("4 input channels", "must take 3")),
    ("seed", '{"depth": 3}', ("do not fit architecture 'seed'", "depth")),
    ("seed", '{"depth": 100000}', ("depth=100000", "integers 0..1024")),
    ("seed", '{"scale": 1e300}', ("scale=1e+300",)),
    ("seed", '{"scale": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]}', ("scale=[1, 2",)),
    ("seed", "[1, 2]", ("arch_args metadata is an array, not a JSON object",)),
])
def test_bad_arch_args_refused_before_any_network_is_built(tmp_path, monkeypatch, arch, args, words):
    import denoise_core.inference.checkpoint as ck
    p = _seed_with_args(tmp_path, args, arch)
    built = []
    real = ck.create_model
    monkeypatch.setattr(ck, "create_model", lambda *a, **k: built.append(torch.get_default_device()) or real(*a, **k))
    msg = _expect(p, *words)
    assert "\n" not in msg
    assert all(d.type == "meta" for d in built)     # laid out on the meta device at most, never allocated


def test_arguments_of_other_architectures_may_be_numbers_and_short_lists(tmp_path, monkeypatch):
    """A later architecture's float scales and size lists pass the range check (a checkpoint of the
    raw model records input_scale=4.0); the layout check then decides."""
    import denoise_core.inference.checkpoint as ck
    args = {}
    monkeypatch.setattr(ck, "create_model", lambda arch, **kw: args.update(kw) or create_model("seed"))
    p = _seed_with_args(tmp_path, '{"input_scale": 4.0, "detail_scale": 16.0, "sizes": [2, 3], "act": "relu"}')
    assert load_checkpoint(p).arch_args == {"input_scale": 4.0, "detail_scale": 16.0, "sizes": [2, 3], "act": "relu"}
    assert args == {"input_scale": 4.0, "detail_scale": 16.0, "sizes": [2, 3], "act": "relu"}


def test_layout_is_checked_before_any_tensor_is_read(tmp_path, monkeypatch):
    import denoise_core.inference.checkpoint as ck
    p = _seed_with_args(tmp_path, '{"width": 16}')       # weights are width 32
    monkeypatch.setattr(ck, "safe_open", lambda *a, **k: pytest.fail("tensors read before the layout check"))
    _expect(p, "do not match architecture 'seed'", "body.0.weight")


def test_huge_checkpoint_refused_from_its_header_alone(tmp_path):
    import tracemalloc
    p = _raw(tmp_path / "big.safetensors",
             json.dumps({"__metadata__": {"format": "denoise-cnn", "format_version": "1", "arch": "seed",
                                          "arch_args": "{}"},
                         "w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4 << 30]}}).encode())
    with open(p, "r+b") as f:        # sparse: 4 GiB long, no disk used
        f.truncate((4 << 30) + 200)
    tracemalloc.start()
    try:
        _expect(p, "1,073,741,824 parameters")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_tensor_data_cut_short_is_truncated(ckpt, tmp_path):
    p, _ = ckpt
    data = p.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-4])
    _expect(tmp_path / "t.safetensors", "truncated")


def test_fifo_checkpoint_refused_without_blocking(tmp_path):
    import os
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    _expect(fifo, "not a regular file")
