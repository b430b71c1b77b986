"""The NCCL cost model (distbench/perfmodel/nccl.py): its presets against published nccl-tests figures, NCCL's
choice between ring and tree, and sanity. Pure functions; nothing here needs a GPU."""

import itertools
import math

import pytest

from distbench.perfmodel import costmodel, nccl

GiB = 1 << 30
LARGE = 8 * GiB  # nccl-tests' peak busbw is read at the largest sizes (-e 8G)

# Published all_reduce busbw at large sizes, ring algorithm (NVLS off / NCCL_ALGO=Ring, or at >= 3 nodes
# where NCCL runs the ring for large messages). (preset, ranks, busbw GB/s, source)
PUBLISHED = [
    (
        "a100-ib-hdr",
        8,
        232.5,
        # 8x A100-SXM 80GB, one node: "singleNode, ./build/all_reduce_perf -b 8 -e 4G -f 2 -g 8, result:
        # 232.54GB/s"; NCCL's own tuner caps A100 busbw at 235 GB/s (src/graph/tuning.cc, compCap80).
        "https://github.com/NVIDIA/nccl-tests/issues/175",
    ),
    (
        "a100-ib-hdr",
        32,
        192.0,
        # NVIDIA (AddyLaddy): "On an Nvidia DGX-A100 system we have 8x200Gbit/s IB cards and we measure
        # 192GB/s AllReduce BusBW" (said of the ring; forcing NCCL_ALGO=RING is advised at two nodes).
        "https://github.com/NVIDIA/nccl/issues/812",
    ),
    (
        "h100-ib-ndr",
        8,
        370.0,
        # NVIDIA (sjeaugey): "NCCL can get an effective NVLink bandwidth of 370GB/s, which you can observe
        # as BusBw ... when running with NCCL_ALGO=RING" on 8 H100; also 365-370 GB/s with ALGO=RING on
        # 8x H100 SXM (https://github.com/NVIDIA/nccl/issues/1455) and 368.76 GB/s with NVLS disabled
        # (https://github.com/NVIDIA/nccl-tests/issues/309).
        "https://github.com/NVIDIA/nccl-tests/issues/212",
    ),
    (
        "h100-ib-ndr",
        32,
        8 * 47.0,
        # NVIDIA (AddyLaddy): "For NDR @ 400Gbps you should see 46-48GB/s per NIC" with NCCL_ALGO=RING
        # across nodes; 8 rail NICs per DGX H100 node -> 8 x 47 GB/s. A derived figure: no multi-node
        # H100 ring table from NVIDIA was found.
        "https://github.com/NVIDIA/nccl-tests/issues/290",
    ),
    (
        "roce-100g",
        32,
        192.0 / 2,
        # Derived, like the row above: NVIDIA measures 192 GB/s on 8x 200 Gb/s per node (nccl/issues/812), so
        # 96 GB/s on 8x 100 Gb/s at the same efficiency. The same maintainer calls a user's 60 GB/s ring on 8x
        # 100 Gb/s "a little low" there, and 75 GB/s on 8x 100 GbE RoCE is "indeed a bit low" in
        # https://github.com/NVIDIA/nccl/issues/495: the expectation lies above both. No vendor RoCE table found.
        "https://github.com/NVIDIA/nccl/issues/812",
    ),
]


@pytest.mark.parametrize("preset,n,published_gbps,source", PUBLISHED, ids=[f"{p[0]}-n{p[1]}" for p in PUBLISHED])
def test_large_message_busbw_within_15_percent_of_published(preset, n, published_gbps, source):
    assert nccl.pick_algorithm("all_reduce", LARGE, n, preset) == "ring"  # what the figure measured
    predicted = nccl.bus_bandwidth("all_reduce", LARGE, n, preset) / 1e9
    assert predicted == pytest.approx(published_gbps, rel=0.15), f"{preset} n={n}: {predicted:.0f} GB/s ({source})"


def test_roce_100g_lies_between_what_users_report_and_the_line_rate():
    """What users report on A100 + 8x 100 GbE RoCE: 600 Gb/s = 75 GB/s on two nodes, "roughly matching our
    expectation (though lower by a little bit)", then "indeed a bit low" (https://github.com/NVIDIA/nccl/issues/495);
    60 GB/s in https://github.com/NVIDIA/nccl/issues/812 was "a little low". The prediction must lie above
    these and below 8 x 12.5 GB/s of line rate (the 15% check above is against a derived figure)."""
    predicted = nccl.bus_bandwidth("all_reduce", LARGE, 32, "roce-100g") / 1e9
    assert 75.0 < predicted < 8 * 12.5


def test_ring_busbw_is_nvlink_in_a_node_and_the_nics_across_nodes():
    h100 = nccl.PRESETS["h100-ib-ndr"]
    assert nccl.ring_busbw(8, h100) == pytest.approx(450e9 * 0.80)
    roce = nccl.PRESETS["roce-100g"]
    assert nccl.ring_busbw(8, roce) == pytest.approx(300e9 * 0.80)
    assert nccl.ring_busbw(16, roce) == pytest.approx(8 * 12.5e9 * 0.94)  # 8 NICs per node carry 8 rings
    assert nccl.ring_busbw(4096, roce) == nccl.ring_busbw(16, roce)  # bounded per node, not by n


# ------------------------------------------------------------------------------------ ring or tree
@pytest.mark.parametrize("preset", sorted(nccl.PUBLIC))
def test_tree_for_small_messages_at_scale_ring_for_large(preset):
    for n in (64, 256, 1024):
        assert nccl.pick_algorithm("all_reduce", 64 << 10, n, preset) == "tree"
    assert nccl.pick_algorithm("all_reduce", 1 * GiB, 64, preset) == "ring"
    assert nccl.pick_algorithm("all_reduce", LARGE, 128, preset) == "ring"
    # one node: a ring at every size; reduce-scatter and all-gather have only the ring
    assert {nccl.pick_algorithm("all_reduce", s, 8, preset) for s in (4, 1 << 20, LARGE)} == {"ring"}
    for op in ("reduce_scatter", "all_gather"):
        assert nccl.pick_algorithm(op, 4096, 1024, preset) == "ring"
    # the choice is the faster one
    t = {a: nccl.collective_time("all_reduce", 4096, 1024, preset, a) for a in nccl.ALGORITHMS}
    assert nccl.collective_time("all_reduce", 4096, 1024, preset) == min(t.values())


def test_tree_latency_grows_like_log_n_ring_latency_like_n():
    p = nccl.PRESETS["h100-ib-ndr"]
    nodes = [2**k for k in range(1, 11)]  # 2 .. 1024 nodes of 8
    tree = [nccl.latency("all_reduce", 8 * m, p, "tree") for m in nodes]
    ring = [nccl.latency("all_reduce", 8 * m, p, "ring") for m in nodes]
    # every doubling of the nodes adds one level up and one down: 2 inter-node latencies
    assert [b - a for a, b in itertools.pairwise(tree)] == pytest.approx([2 * p.inter_latency_s] * 9)
    # the ring's latency roughly doubles with n
    assert all(1.9 < b / a < 2.1 for a, b in itertools.pairwise(ring[1:]))
    # and the tree's small-message time follows: log2(8192) / log2(16) levels
    small = [nccl.collective_time("all_reduce", 0, 8 * m, p, "tree") for m in (2, 1024)]
    assert (small[1] - nccl.BASE_LATENCY_S) / (small[0] - nccl.BASE_LATENCY_S) < 4


# ------------------------------------------------------------------------------------------ sanity
@pytest.mark.parametrize("op", nccl.OPS)
@pytest.mark.parametrize("preset", sorted(nccl.PRESETS))
def test_time_grows_with_size_and_ranks(op, preset):
    sizes = [4 << k for k in range(0, 34, 3)]  # 4 B .. 32 GiB
    ranks = [2, 4, 8, 16, 24, 32, 64, 128, 512, 1024, 4096]
    for n in ranks:
        times = [nccl.collective_time(op, s, n, preset) for s in sizes]
        assert all(b > a for a, b in itertools.pairwise(times)), (op, n)
    for s in sizes:
        times = [nccl.collective_time(op, s, n, preset) for n in ranks]
        assert all(b >= a for a, b in itertools.pairwise(times)), (op, s)


@pytest.mark.parametrize("preset", sorted(nccl.PRESETS))
def test_a_world_of_one_sends_nothing(preset):
    for op in nccl.OPS:
        assert nccl.collective_time(op, GiB, 1, preset) == 0.0
        assert nccl.bus_bandwidth(op, GiB, 1, preset) == 0.0
        assert nccl.latency(op, 1, preset, "ring") == 0.0


def test_reduce_scatter_and_all_gather_cost_half_an_all_reduce():
    p = "a100-ib-hdr"
    for n in (8, 64):
        ar = nccl.collective_time("all_reduce", LARGE, n, p, "ring")
        for op in ("reduce_scatter", "all_gather"):
            one = nccl.collective_time(op, LARGE, n, p)
            assert one == pytest.approx(ar / 2, rel=1e-3)
            assert nccl.bus_bandwidth(op, LARGE, n, p) == pytest.approx(
                nccl.bus_bandwidth("all_reduce", LARGE, n, p, "ring"), rel=1e-3
            )


def test_ring_time_is_the_alpha_beta_ring_in_one_node():
    # in one node the ring is costmodel's ring with alpha = the NVLink step (plus NCCL's base latency)
    p = nccl.PRESETS["a100-ib-hdr"]
    expected = nccl.BASE_LATENCY_S + costmodel.ring_allreduce_time(1e8, 8, p.intra_latency_s, p.intra_busbw)
    assert nccl.collective_time("all_reduce", 1e8, 8, p) == pytest.approx(expected)


# ------------------------------------------------------------------------------------- bad input
def test_bad_input_names_itself():
    with pytest.raises(KeyError, match="did you mean 'h100-ib-ndr'"):
        nccl.collective_time("all_reduce", 1, 16, "h100-ib-nrd")
    with pytest.raises(ValueError, match="did you mean 'all_reduce'"):
        nccl.collective_time("allreduce", 1, 16, "h100-ib-ndr")
    with pytest.raises(ValueError, match="no tree reduce_scatter"):
        nccl.collective_time("reduce_scatter", 1, 16, "h100-ib-ndr", "tree")
    with pytest.raises(ValueError, match="n must be"):
        nccl.collective_time("all_reduce", 1, 0, "h100-ib-ndr")
    with pytest.raises(ValueError, match="nbytes"):
        nccl.collective_time("all_reduce", -1, 16, "h100-ib-ndr")
    good = nccl.PRESETS["h100-ib-ndr"]
    with pytest.raises(ValueError, match="gpus_per_node"):
        nccl.Interconnect("x", 0, 1e9, 1e-6, 1e9, 1e-6)
    with pytest.raises(ValueError, match="nic_efficiency"):
        nccl.Interconnect("x", 8, 1e9, 1e-6, 1e9, 1e-6, nic_efficiency=1.5)
    with pytest.raises(ValueError, match="inter_latency_s"):
        nccl.Interconnect("x", 8, 1e9, 1e-6, 1e9, math.nan)
    assert nccl.get_preset(good) is good


def test_every_preset_cites_its_sources():
    assert {"a100-ib-hdr", "h100-ib-ndr", "roce-100g"} <= set(nccl.PRESETS)
    for name, p in nccl.PUBLIC.items():
        assert p.name == name and p.source
