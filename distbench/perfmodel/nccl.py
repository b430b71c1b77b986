"""A cost model of NCCL's all-reduce, reduce-scatter and all-gather on GPU clusters, from public figures.

`costmodel` fits one alpha-beta ring to what this machine measures with gloo; this module predicts what
NCCL would do on hardware we do not have: 8-GPU nodes joined by NVLink/NVSwitch inside and one NIC per
GPU between nodes (the DGX/HGX "rail" layout). It follows NCCL's own tuner (src/graph/tuning.cc,
ncclTopoTuneModel and ncclTopoGetAlgoTime, read at commit 01afd20 of github.com/NVIDIA/nccl): each
algorithm's time is a latency plus bytes over a bandwidth, and NCCL runs the all-reduce algorithm whose
predicted time is least; reduce-scatter and all-gather have only the ring.

Sizes are nccl-tests' (doc/PERFORMANCE.md): S is the whole buffer (all_reduce's tensor, all_gather's
output, reduce_scatter's input), and busbw = S / t x 2(n-1)/n for all-reduce, S / t x (n-1)/n for the
other two. With N = ceil(n / g) nodes of g GPUs and p = min(n, g) GPUs per node:

Ring. 2(n-1) steps for all-reduce, 2(N-1) of them across nodes (n-1 and N-1 for the other two):

    T_ring = base + (steps - inter_steps) x intra_latency + inter_steps x inter_latency + share x S / B_ring

share = 2(n-1)/n (all-reduce) or (n-1)/n, so B_ring is the ring's busbw. In one node B_ring is the NVLink
bandwidth per GPU. Across nodes NCCL runs p rings (channels) side by side, each leaving a node through a
different GPU and that GPU's NIC, so each NIC carries 1/p of the traffic that one GPU would: B_ring =
min(NVLink, p x NIC), i.e. the busbw across nodes is bounded by the NIC bandwidth per GPU times the GPUs
that share the node (8 x 25 GB/s for HDR), which is what NVIDIA's engineers quote (192 GB/s busbw on
DGX A100 with 8 HDR NICs; 46-48 GB/s per NDR NIC).

Tree (all-reduce across nodes only). A chain inside each node and a double binary tree across nodes;
reduce up, broadcast down, so the latency grows like log2 N instead of n:

    T_tree = base + 2 ((p-1) x intra_latency + log2(N) x inter_latency) + S / (0.5 x 0.9 x B_ring)

The 0.5 (busbw to algbw) and 0.9 (tree efficiency) are NCCL's tuner's. The ring's algbw is B_ring x
n / 2(n-1) -> B_ring / 2, so the tree loses a little bandwidth and wins on latency: NCCL picks it for small
and medium messages at scale and the ring for large ones, which is what `pick_algorithm` reproduces.

Bandwidths are line rates from datasheets times an efficiency from NCCL's maintainers: NVLink at ~80%
("with the protocol overhead (~20%) NCCL can get an effective NVLink bandwidth of 370GB/s" of H100's 450)
and NICs at ~94% (46-48 GB/s per 400 Gb/s NDR NIC). Latencies are NCCL's tuner's per-step figures for its
Simple protocol (3.4 us an NVLink step, 9.6 us a network step, 8.4 us base).

What NCCL does that this model leaves out, and so how far to trust it:
- Protocols. NCCL chooses among LL, LL128 and Simple per call; LL has per-step latencies 4-7x smaller and
  a quarter of the bandwidth. The model is Simple only, so messages under ~1 MiB are predicted slower than
  NCCL runs them (several times slower for a few KiB in one node); from a few MiB up (DDP's 25 MiB
  buckets, FSDP's per-block collectives) Simple is what NCCL runs and the model applies.
- NVLink SHARP (NVLS, H100 NVSwitch reduces in the switch: ~480 GB/s all-reduce busbw on 8 H100 against
  the ring's ~370), CollNet/SHARP in InfiniBand switches, PAT and NVLS-tree: left out; predictions are
  for the ring and tree NCCL runs with NCCL_NVLS_ENABLE=0 / NCCL_ALGO=Ring,Tree.
- Channels, chunk sizes and the tuner's per-version corrections (tree correction factors for medium
  sizes, the ring's latency plateau, caps such as 235 GB/s on A100): not modelled; the tree's per-step
  latency is taken equal to the ring's, where NCCL charges its Simple tree more (it pipelines 256 KiB
  chunks), so the model's tree takes over from the ring at somewhat smaller n than NCCL's does.
- Two nodes: NCCL's tree there sends each byte across the network once, so its reported busbw exceeds
  the NIC bound (a known artefact of the busbw formula); the model bounds the tree by the NICs like the
  ring and is conservative at exactly two nodes.
- The network is taken as non-blocking (a rail-optimised fat tree); oversubscription, congestion, other
  jobs' traffic and partly filled nodes are not modelled.
Trust the large-message bandwidth to ~15% (tests/test_costmodel_nccl.py holds it to published nccl-tests
figures), the ring/tree choice as a trend, and small-message times as an upper bound.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields

OPS: tuple[str, ...] = ("all_reduce", "reduce_scatter", "all_gather")
ALGORITHMS: tuple[str, ...] = ("ring", "tree")

# NCCL's tuner, src/graph/tuning.cc at github.com/NVIDIA/nccl commit 01afd20 (baseLat and hwLat, Simple
# protocol; the bandwidth factors of tree all-reduce):
BASE_LATENCY_S = 8.4e-6  # baseLat, Ring/Simple
NVLINK_STEP_LATENCY_S = 3.4e-6  # hwLat NVLINK, Ring/Simple
NET_STEP_LATENCY_S = 9.6e-6  # hwLat NET, Ring/Simple
TREE_ALGBW_PER_BUSBW = 0.5  # "Convert bus BW to algorithm BW": ratio .5 for every algorithm but the ring
TREE_EFFICIENCY = 0.9  # "if (a == NCCL_ALGO_TREE) busBw = std::min(busBw*.9, maxTreeBw)"

# Efficiencies, from NCCL's maintainers on the nccl-tests tracker:
# NVLink: "450GB/s is the line rate. With the protocol overhead (~20%) NCCL can get an effective NVLink
# bandwidth of 370GB/s" (S. Jeaugey, https://github.com/NVIDIA/nccl-tests/issues/212).
NVLINK_EFFICIENCY = 0.80
# NIC: "For NDR @ 400Gbps you should see 46-48GB/s per NIC" (https://github.com/NVIDIA/nccl-tests/issues/290),
# i.e. 92-96% of 50 GB/s; "the peak for 200G HDR is 24GB/s" (https://github.com/NVIDIA/nccl/issues/412), 96%.
NIC_EFFICIENCY = 0.94


@dataclass(frozen=True)
class Interconnect:
    """A cluster's GPU interconnect: nodes of `gpus_per_node` GPUs, NVLink inside, one NIC per GPU across."""

    name: str
    gpus_per_node: int
    """GPUs in one NVLink domain (a node)."""
    intra_bytes_per_s: float
    """NVLink/NVSwitch bandwidth per GPU, one direction, line rate (bytes/s)."""
    intra_latency_s: float
    """Latency of one ring step between GPUs of a node (s)."""
    nic_bytes_per_s: float
    """The NIC bandwidth of one GPU, one direction, line rate (bytes/s)."""
    inter_latency_s: float
    """Latency of one ring step between nodes (s)."""
    intra_efficiency: float = NVLINK_EFFICIENCY
    """Fraction of the NVLink line rate a collective gets (protocol overhead)."""
    nic_efficiency: float = NIC_EFFICIENCY
    """Fraction of the NIC line rate a collective gets."""
    base_latency_s: float = BASE_LATENCY_S
    """Latency of a call whatever its steps (s): launch and set-up."""
    host_cores: int | None = None
    """CPU ranks on one host (the `measured` preset): the cores they share. None for GPUs, each of which
    has its own engine. Past this many ranks the host is time-shared (see `shared_host_time`)."""
    shared_latency_s: float | None = None
    """Latency of one ring step while ranks outnumber the cores: the receiver must be scheduled first."""
    shared_exposed: float = 1.0
    """While ranks outnumber the cores, the fraction of the shorter of (steps' latency, transfer) that the
    other does not hide: a rank waiting to be scheduled leaves its core to another rank's copying."""
    source: str = ""
    """Where the numbers come from."""

    def __post_init__(self) -> None:
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 1:
            raise ValueError(f"gpus_per_node must be a positive int, got {self.gpus_per_node!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_s") and value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{f.name} must be positive and finite, got {value!r}")
            if f.name.endswith("efficiency") and not 0 < value <= 1:
                raise ValueError(f"{f.name} must lie in (0, 1], got {value!r}")
        if not 0 <= self.shared_exposed <= 1:
            raise ValueError(f"shared_exposed must lie in [0, 1], got {self.shared_exposed!r}")
        if self.host_cores is not None and (not isinstance(self.host_cores, int) or self.host_cores < 1):
            raise ValueError(f"host_cores must be a positive int, got {self.host_cores!r}")

    @property
    def intra_busbw(self) -> float:
        """Bytes/s a ring inside one node achieves as busbw."""
        return self.intra_bytes_per_s * self.intra_efficiency

    @property
    def nic_busbw(self) -> float:
        """Bytes/s one NIC achieves."""
        return self.nic_bytes_per_s * self.nic_efficiency


PUBLIC: dict[str, Interconnect] = {
    p.name: p
    for p in (
        Interconnect(
            name="a100-ib-hdr",
            gpus_per_node=8,  # DGX A100 / HGX A100 8-GPU
            # NVLink 3: 12 links x 25 GB/s = 300 GB/s each way; NVIDIA quotes the two directions together,
            # "GPU to GPU communication to peak at 600 GB/s" through six NVSwitches (A100 whitepaper; DGX A100
            # architecture, https://developer.nvidia.com/blog/defining-ai-innovation-with-dgx-a100)
            intra_bytes_per_s=300e9,
            intra_latency_s=NVLINK_STEP_LATENCY_S,
            # HDR InfiniBand, 200 Gb/s per port, one per GPU: "On an Nvidia DGX-A100 system we have
            # 8x200Gbit/s IB cards" (NVIDIA, https://github.com/NVIDIA/nccl/issues/812)
            nic_bytes_per_s=200e9 / 8,
            inter_latency_s=NET_STEP_LATENCY_S,
            source="DGX A100: NVLink3 600 GB/s bidirectional, 8x HDR 200 Gb/s NICs; latencies NCCL tuning.cc",
        ),
        Interconnect(
            name="h100-ib-ndr",
            gpus_per_node=8,  # DGX H100 / HGX H100 8-GPU
            # NVLink 4: 18 links x 25 GB/s = 450 GB/s each way, 900 GB/s bidirectional (H100 product page,
            # https://www.nvidia.com/en-us/data-center/h100/); "450GB/s is the line rate" (NVIDIA,
            # https://github.com/NVIDIA/nccl-tests/issues/212)
            intra_bytes_per_s=450e9,
            intra_latency_s=NVLINK_STEP_LATENCY_S,
            # NDR InfiniBand, 400 Gb/s per port: DGX H100 has "eight single-port NVIDIA ConnectX-7 VPI, ... up
            # to 400 Gb/s InfiniBand/Ethernet", one per GPU (the DGX H100 user guide's port-to-GPU table), per
            # https://docs.nvidia.com/dgx-basepod/reference-architecture-infrastructure-foundation-enterprise-ai/latest/core-components.html
            nic_bytes_per_s=400e9 / 8,
            inter_latency_s=NET_STEP_LATENCY_S,
            source="DGX H100: NVLink4 900 GB/s bidirectional, 8x ConnectX-7 NDR 400 Gb/s; latencies NCCL tuning.cc",
        ),
        Interconnect(
            name="roce-100g",
            gpus_per_node=8,
            # A100 nodes (NVLink 3 as above) with one 100 GbE RoCE NIC per GPU, the layout of the A100 + 8x100G
            # RoCE clusters in https://github.com/NVIDIA/nccl/issues/495 and nccl-tests/issues/169
            intra_bytes_per_s=300e9,
            intra_latency_s=NVLINK_STEP_LATENCY_S,
            nic_bytes_per_s=100e9 / 8,  # 100 Gb/s Ethernet
            # NCCL's tuner has one network latency for IB and RoCE alike
            inter_latency_s=NET_STEP_LATENCY_S,
            source=(
                "NVLink3 as a100-ib-hdr, 100 GbE line rate per GPU; checked against 96 GB/s derived from NVIDIA's "
                "192 GB/s on 8x HDR (no vendor RoCE nccl-tests table found; users report 60-75 GB/s, which NVIDIA "
                "calls a bit low: github.com/NVIDIA/nccl/issues/495, /812)"
            ),
        ),
    )
}


# This machine (2-core Xeon, gloo ranks over loopback TCP, one host), as `python -m distbench.perfmodel.costmodel
# --fit-preset analysis/data/commbench_measured.jsonl` prints it: commbench all_reduce at 2 and 4 ranks,
# 1 KiB to 256 MiB, one run of 30 windows per size and three of 15, medians, 2026-11-23.
# tests/test_costmodel.py holds it equal to that fit and checks it against a fresh commbench run at 2 and
# 4 ranks. Refit after new records. Beyond the ranks measured it extrapolates one ring on one host.
MEASURED = Interconnect(
    name="measured",
    gpus_per_node=1048576,  # one host: every rank in one ring
    intra_bytes_per_s=1.248e09,
    intra_latency_s=0.0003351,
    nic_bytes_per_s=1.248e09,
    inter_latency_s=0.0003351,
    intra_efficiency=1.0,
    nic_efficiency=1.0,
    base_latency_s=1e-09,
    host_cores=2,
    shared_latency_s=0.001119,
    shared_exposed=0.3,
    source="fitted to analysis/data/commbench_measured.jsonl",
)
PRESETS: dict[str, Interconnect] = {**PUBLIC, MEASURED.name: MEASURED}


def get_preset(preset: str | Interconnect) -> Interconnect:
    """The named preset (or `preset` itself); an unknown name raises KeyError listing the known ones."""
    if isinstance(preset, Interconnect):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        from distbench.config import UnknownName

        hint = difflib.get_close_matches(str(preset), sorted(PRESETS), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UnknownName(
            f"unknown interconnect {preset!r}{did_you_mean}; choose from: {', '.join(sorted(PRESETS))}"
        ) from None


def _check(op: str, n: int, algorithm: str | None = None) -> None:
    if op not in OPS:
        hint = difflib.get_close_matches(op, OPS, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown op {op!r}{did_you_mean}; choose from: {', '.join(OPS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose from: {', '.join(ALGORITHMS)}")
    if algorithm == "tree" and op != "all_reduce":
        raise ValueError(f"NCCL has no tree {op}; only all_reduce has one")


def layout(n: int, preset: str | Interconnect) -> tuple[int, int]:
    """(nodes, GPUs per node) for n ranks packed onto whole nodes: (ceil(n / g), min(n, g))."""
    p = get_preset(preset)
    return math.ceil(n / p.gpus_per_node), min(n, p.gpus_per_node)


def ring_busbw(n: int, preset: str | Interconnect) -> float:
    """The ring's bus bandwidth (bytes/s): NVLink in one node; across nodes min(NVLink, p x NIC)."""
    p = get_preset(preset)
    nodes, per_node = layout(n, p)
    return p.intra_busbw if nodes == 1 else min(p.intra_busbw, per_node * p.nic_busbw)


def _share(op: str, n: int) -> float:
    """busbw / algbw: the fraction of S each rank sends in a ring (nccl-tests' bus factor)."""
    return (2 if op == "all_reduce" else 1) * (n - 1) / n


def _time_shared(n: int, p: Interconnect) -> bool:
    """More CPU ranks than the host has cores."""
    return bool(p.host_cores) and n > p.host_cores


def latency(op: str, n: int, preset: str | Interconnect, algorithm: str) -> float:
    """The size-independent part of the time (s)."""
    _check(op, n, algorithm)
    p = get_preset(preset)
    if n == 1:
        return 0.0
    nodes, per_node = layout(n, p)
    intra = p.shared_latency_s if _time_shared(n, p) and p.shared_latency_s else p.intra_latency_s
    if algorithm == "ring":
        per_phase = 2 if op == "all_reduce" else 1
        steps, inter_steps = per_phase * (n - 1), per_phase * (nodes - 1)
        return p.base_latency_s + (steps - inter_steps) * intra + inter_steps * p.inter_latency_s
    return p.base_latency_s + 2 * ((per_node - 1) * intra + math.log2(nodes) * p.inter_latency_s)


def shared_host_time(base: float, steps: float, transfer: float, n: int, p: Interconnect) -> float:
    """base + steps + transfer, except on a time-shared host (more CPU ranks than cores): there the
    transfer (copies and reductions, CPU work) runs n / cores times slower, and the steps' scheduling waits
    overlap other ranks' work, so only `shared_exposed` of the shorter of the two adds to the longer."""
    if not _time_shared(n, p):
        return base + steps + transfer
    transfer *= n / p.host_cores
    return base + max(steps, transfer) + p.shared_exposed * min(steps, transfer)


def algorithm_time(op: str, nbytes: float, n: int, preset: str | Interconnect, algorithm: str) -> float:
    """Seconds for `op` on `nbytes` (nccl-tests' size) over n ranks with the given algorithm."""
    _check(op, n, algorithm)
    if nbytes < 0:
        raise ValueError(f"nbytes must be non-negative, got {nbytes!r}")
    if n == 1:
        return 0.0  # a world of one sends nothing
    p = get_preset(preset)
    if algorithm == "ring":
        transfer = _share(op, n) * nbytes / ring_busbw(n, p)
    else:
        transfer = nbytes / (TREE_ALGBW_PER_BUSBW * TREE_EFFICIENCY * ring_busbw(n, p))
    lat = latency(op, n, p, algorithm)
    return shared_host_time(p.base_latency_s, lat - p.base_latency_s, transfer, n, p)


def candidates(op: str, n: int, preset: str | Interconnect) -> tuple[str, ...]:
    """The algorithms NCCL weighs: ring and tree for all-reduce across nodes, otherwise the ring.

    In one node NCCL's tree is a chain whose Simple-protocol latency its tuner rates far above the ring's,
    so it is not chosen there; the model leaves it out rather than mis-rate it with the ring's latency."""
    _check(op, n)
    nodes, _ = layout(n, preset)
    return ALGORITHMS if op == "all_reduce" and nodes > 1 else ("ring",)


def pick_algorithm(op: str, nbytes: float, n: int, preset: str | Interconnect) -> str:
    """The algorithm NCCL's tuner would pick: the candidate with the least predicted time."""
    return min(candidates(op, n, preset), key=lambda a: algorithm_time(op, nbytes, n, preset, a))


def collective_time(op: str, nbytes: float, n: int, preset: str | Interconnect, algorithm: str | None = None) -> float:
    """Seconds NCCL takes for `op` ("all_reduce", "reduce_scatter", "all_gather") on `nbytes` over n ranks.

    nbytes is nccl-tests' size: the whole tensor (all-gather's output, reduce-scatter's input). preset is a
    name in PRESETS or an Interconnect. algorithm=None picks as NCCL's tuner does (see `pick_algorithm`); "ring" or
    "tree" forces one, as NCCL_ALGO does.
    """
    _check(op, n, algorithm)
    if n == 1:
        return 0.0
    chosen = algorithm or pick_algorithm(op, nbytes, n, preset)
    return algorithm_time(op, nbytes, n, preset, chosen)


def bus_bandwidth(op: str, nbytes: float, n: int, preset: str | Interconnect, algorithm: str | None = None) -> float:
    """The busbw (bytes/s) nccl-tests would report: nbytes / time x 2(n-1)/n (all-reduce) or (n-1)/n."""
    _check(op, n, algorithm)
    if n == 1 or nbytes == 0:
        return 0.0
    return nbytes / collective_time(op, nbytes, n, preset, algorithm) * _share(op, n)
