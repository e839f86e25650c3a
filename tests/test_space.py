"""The DARTS cell space: ops, supernet, genotypes, final network."""

import json
from pathlib import Path

import pytest
import torch

from rnas.evaluation.complexity import count_parameters
from rnas.space.genotype import (
    GenotypeError,
    derive_genotype,
    load_genotype,
    random_genotype,
    save_genotype,
    validate_genotype,
)
from rnas.space.network import CellNetwork
from rnas.space.ops import PRIMITIVES, is_parameter_free, make_op
from rnas.space.supernet import Supernet

REF = Path(__file__).resolve().parent / "data"  # darts_v2.json: the published DARTS V2 genotype (tests/data)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
def test_each_op_shapes_and_gradients(name, stride):
    op = make_op(name, 4, stride, affine=True)
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    out = op(x)
    assert out.shape == (2, 4, 4 if stride == 2 else 7, 4 if stride == 2 else 7)
    out.square().sum().backward()
    n_params = sum(p.numel() for p in op.parameters())
    assert (n_params == 0) == is_parameter_free(name, stride)
    for p in op.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    if name != "none":
        assert x.grad.abs().sum() > 0


def test_unknown_op_lists_known():
    with pytest.raises(ValueError, match="sep_conv_3x3"):
        make_op("conv_7x7", 4, 1, True)


def test_supernet_every_op_and_arch_parameter_gets_gradient():
    net = Supernet(4, 3, 10, input_channels=1, dataset="digits")
    x = torch.rand(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    for p in net.arch_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad != 0).all()
    for name, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
    arch_ids = {id(p) for p in net.arch_parameters()}
    assert not any(id(p) in arch_ids for p in net.weights())
    assert len(net.weights()) + len(net.arch_parameters()) == len(list(net.parameters()))


def test_genotype_json_round_trip(tmp_path):
    g = random_genotype(4, torch.Generator().manual_seed(3))
    save_genotype(g, tmp_path / "g.json")
    assert load_genotype(tmp_path / "g.json") == g
    assert validate_genotype(json.loads(json.dumps(g.to_dict()))) == g


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["normal"].__setitem__(0, ["conv_9x9", 0]), "unknown op"),
        (lambda d: d["normal"].__setitem__(0, ["sep_conv_3x3", 2]), "invalid for node 0"),
        (lambda d: d["reduce"].pop(), "two per node"),
        (lambda d: d.__setitem__("extra", 1), "unknown"),
        (lambda d: d.__setitem__("normal_concat", [2, 9]), "normal_concat"),
    ],
)
def test_bad_genotypes_are_refused(mutate, match):
    d = json.loads((REF / "darts_v2.json").read_text())
    mutate(d)
    with pytest.raises(GenotypeError, match=match):
        validate_genotype(d)


def test_darts_v2_parameter_count_matches_reference():
    g = load_genotype(REF / "darts_v2.json")
    assert count_parameters(CellNetwork(g, 36, 20, 10, 3)) == 3_349_342
    assert count_parameters(CellNetwork(g, 36, 20, 100, 3)) == 3_401_272
    assert count_parameters(CellNetwork(g, 16, 8, 10, 3)) == 246_106


def test_derive_keeps_two_strongest_non_none_edges():
    n_edges = 14
    w = torch.zeros(n_edges, len(PRIMITIVES))
    w[:, PRIMITIVES.index("none")] = 10.0  # 'none' never chosen
    # node 0: edges 0,1; make edge 1 sep_conv_5x5 strongest, edge 0 max_pool
    w[0, PRIMITIVES.index("max_pool_3x3")] = 1.0
    w[1, PRIMITIVES.index("sep_conv_5x5")] = 2.0
    # node 1: edges 2,3,4; strongest: edge 4 (input 2) dil_conv_3x3 and edge 2 (input 0) skip
    w[2, PRIMITIVES.index("skip_connect")] = 3.0
    w[3, PRIMITIVES.index("avg_pool_3x3")] = 0.5
    w[4, PRIMITIVES.index("dil_conv_3x3")] = 4.0
    g = derive_genotype(w, w, nodes=4)
    assert g.normal[0:2] == (("max_pool_3x3", 0), ("sep_conv_5x5", 1))
    assert g.normal[2:4] == (("skip_connect", 0), ("dil_conv_3x3", 2))
    assert all(op != "none" for op, _ in g.normal)
    validate_genotype(g.to_dict())


def test_final_network_from_genotype_trains():
    g = random_genotype(4, torch.Generator().manual_seed(0))
    net = CellNetwork(g, 4, 3, 10, input_channels=1, dataset="digits")
    x = torch.rand(3, 1, 8, 8)
    out = net(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    rebuilt = CellNetwork(**{k: v for k, v in net.model_args.items() if k != "kind"})
    rebuilt.load_state_dict(net.state_dict())
    net.eval()
    rebuilt.eval()
    assert torch.equal(net(x), rebuilt(x))


def test_none_edges_are_valid_in_a_final_network():
    d = json.loads((REF / "darts_v2.json").read_text())
    d["normal"][0] = ["none", 0]
    net = CellNetwork(validate_genotype(d), 4, 3, 10, 1)
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
