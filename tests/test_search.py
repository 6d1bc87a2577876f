"""The nearest-code search: every path gives the exact fp32 formula's codes (but on exact ties), in bounded
memory, and the plain formula is what export traces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from vqkit import codebook as codebook_module
from vqkit.search import MIN_ROWS, nearest_code, nearest_code_chunked, nearest_code_plain, tile_shape

SHAPES = [  # (N, K, D): odd sizes, N below one chunk, K = 1, K past one tile, tiny and wide D
    (1, 1, 1),
    (7, 1, 5),
    (100, 3, 64),
    (1000, 512, 64),
    (333, 8193, 17),
    (2500, 257, 3),
    (64, 40, 200),
]


def _data(n: int, k: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)


def assert_nearest(codes: torch.Tensor, z: torch.Tensor, e: torch.Tensor) -> None:
    """Codes equal the plain fp32 formula's, except where the two picks are a tie in exact arithmetic
    (fp64 distances equal up to fp32 rounding); and every pick is a true nearest code up to that rounding."""
    ref = nearest_code_plain(z, e)
    assert codes.dtype == torch.int64 and codes.shape == ref.shape
    d64 = torch.cdist(z.double(), e.double()) ** 2
    scale = (z.double() ** 2).sum(1) + (e.double() ** 2).sum(1).max()
    slack = 1e-5 * scale
    rows = torch.arange(len(codes))
    assert bool((d64[rows, codes] <= d64.min(1).values + slack).all()), "a code is not the nearest"
    differ = codes != ref
    assert bool((d64[rows, codes] - d64[rows, ref]).abs()[differ].le(slack[differ]).all())
    assert differ.float().mean() <= 0.01


@pytest.mark.parametrize(("n", "k", "d"), SHAPES)
def test_chunked_matches_plain_formula(n: int, k: int, d: int) -> None:
    z, e = _data(n, k, d)
    assert_nearest(nearest_code_chunked(z, e), z, e)
    # A small budget forces row chunks and, below MIN_ROWS x K, about 3 codebook tiles with a running minimum.
    assert_nearest(nearest_code_chunked(z, e, max_bytes=MIN_ROWS * 4 * max(1, k // 3)), z, e)


def _with_non_finite(n: int, k: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random latents and codes with NaN and infinite entries in some rows of each."""
    z, e = _data(n, k, d, seed)
    e[3, 0] = float("nan")
    e[k - 1, d - 1] = float("inf")
    z[1, d // 2] = float("nan")
    z[4, 0] = float("-inf")
    return z, e


def _assert_non_finite_rule(codes: torch.Tensor, z: torch.Tensor, e: torch.Tensor) -> None:
    """Non-finite latents get code 0; non-finite codes are never picked; the rest is the nearest finite code."""
    assert codes[1] == 0 and codes[4] == 0
    good = torch.isfinite(e).all(1)
    assert not bool(torch.isin(codes, torch.nonzero(~good).flatten()).any())
    rows = torch.isfinite(z).all(1)
    ref = torch.nonzero(good).flatten()[nearest_code_plain(z[rows], e[good])]
    assert torch.equal(codes[rows], ref)


@pytest.mark.parametrize("max_bytes", [None, MIN_ROWS * 4 * 30])
def test_non_finite_latents_and_codes_follow_one_rule_on_every_cpu_path(max_bytes: int | None) -> None:
    z, e = _with_non_finite(500, 100, 16)
    plain = nearest_code_plain(z, e)
    _assert_non_finite_rule(plain, z, e)
    assert torch.equal(nearest_code_chunked(z, e, max_bytes=max_bytes), plain)
    assert torch.equal(nearest_code(z, e), plain)
    # Every code broken: every latent gets code 0, as the kernel's running minimum gives it.
    assert torch.equal(
        nearest_code_chunked(z, torch.full_like(e, float("nan"))), torch.zeros(500, dtype=torch.int64)
    )
    assert torch.equal(
        nearest_code_plain(z, torch.full_like(e, float("nan"))), torch.zeros(500, dtype=torch.int64)
    )


def test_auto_on_cpu_and_codebook_module_give_the_same_codes() -> None:
    z, e = _data(3000, 700, 32)
    codes = nearest_code(z, e)
    assert torch.equal(codes, nearest_code_chunked(z, e))
    assert torch.equal(codebook_module.nearest_code(z, e), codes)
    assert_nearest(codes, z, e)


@pytest.mark.parametrize("max_bytes", [None, 256 * 4 * 3])
def test_exact_ties_go_to_the_lowest_index_as_argmin(max_bytes: int | None) -> None:
    _, e = _data(1, 300, 8)
    e[250] = e[7]  # the same code twice, in different codebook tiles under the small budget
    z = e[[7, 250, 7]].clone()
    assert nearest_code_chunked(z, e, max_bytes=max_bytes).tolist() == [7, 7, 7]
    assert nearest_code_plain(z, e).tolist() == [7, 7, 7]


def test_bf16_inputs_and_autocast_still_search_in_fp32() -> None:
    z, e = _data(2000, 512, 64, seed=1)
    zb, eb = z.bfloat16(), e.bfloat16()
    ref = nearest_code_plain(zb.float(), eb.float())  # bf16 values are exact in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = torch.argmin(
            (zb**2).sum(-1, keepdim=True) + (eb**2).sum(-1) - 2 * torch.matmul(z, e.t()), dim=-1
        )
        got = [nearest_code(zb, eb), nearest_code(z.bfloat16(), e), nearest_code(zb, eb, backend="plain")]
    assert (naive != ref).any(), "the data must tell a bf16 search from an fp32 one"
    assert torch.equal(got[0], nearest_code_chunked(zb.float(), eb.float()))
    assert_nearest(got[0], zb.float(), eb.float())
    assert_nearest(got[1], zb.float(), e)
    assert torch.equal(got[2], ref)


def test_inputs_requiring_grad_and_empty_batches() -> None:
    z, e = _data(50, 20, 4)
    codes = nearest_code(z.requires_grad_(), torch.nn.Parameter(e))
    assert not codes.requires_grad
    assert nearest_code(torch.empty(0, 4), e).shape == (0,)


def test_bad_shapes_and_backend_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="same D"):
        nearest_code(torch.zeros(3, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least one code"):
        nearest_code(torch.zeros(3, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="backend"):
        nearest_code(torch.zeros(3, 4), torch.zeros(5, 4), backend="fast")


@pytest.mark.parametrize(
    ("n", "k", "budget"), [(10, 5, 1 << 20), (100_000, 8192, 8 << 20), (1000, 10**7, 8 << 20)]
)
def test_tiles_stay_within_the_budget(n: int, k: int, budget: int) -> None:
    rows, codes = tile_shape(n, k, budget)
    assert 1 <= rows <= n and 1 <= codes <= k and rows * codes * 4 <= budget


def test_search_memory_stays_bounded_where_the_formula_needs_512_mib() -> None:
    # Peak resident memory (VmHWM, reset through clear_refs) of a fresh process, over its resident memory
    # just before the search: the plain formula's N x K fp32 matrix alone would be 512 MiB here.
    script = textwrap.dedent(
        """
        import re, torch
        from vqkit.codebook import nearest_code
        torch.set_num_threads(2)
        kib = lambda key: int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
        z, e = torch.randn(16384, 16), torch.randn(8192, 16)
        nearest_code(z[:100], e)  # one-time lazy initialisation (code pages, thread pools) is not the search's
        open("/proc/self/clear_refs", "w").write("5")
        before = kib("VmRSS")
        nearest_code(z, e)
        print((kib("VmHWM") - before) * 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) < 64 * 2**20


def test_onnx_export_traces_the_plain_formula_with_a_dynamic_batch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")

    class Search(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.codebook = torch.nn.Parameter(torch.randn(300, 16))

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return nearest_code(z, self.codebook)

    model = Search().eval()
    path = tmp_path / "search.onnx"
    batch = torch.export.Dim("n")
    torch.onnx.export(model, (torch.randn(8, 16),), str(path), dynamo=True, dynamic_shapes={"z": {0: batch}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5000):  # 5000 rows is several CPU chunks: a traced chunk loop would not give these
        z = torch.randn(n, 16)
        (codes,) = session.run(None, {session.get_inputs()[0].name: z.numpy()})
        np.testing.assert_array_equal(codes, nearest_code(z, model.codebook).numpy())
    # The exported graph applies the same non-finite rule as the eager paths.
    z, e = _with_non_finite(50, 300, 16)
    with torch.no_grad():
        model.codebook.copy_(e)
    torch.onnx.export(model, (torch.randn(8, 16),), str(path), dynamo=True, dynamic_shapes={"z": {0: batch}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (codes,) = session.run(None, {session.get_inputs()[0].name: z.numpy()})
    np.testing.assert_array_equal(codes, nearest_code_chunked(z, e).numpy())
    _assert_non_finite_rule(torch.from_numpy(codes), z, e)


def test_torch_compile_calls_the_search_as_one_opaque_op() -> None:
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    search = torch.compile(lambda z, e: nearest_code(z, e), backend=backend, fullgraph=True, dynamic=True)
    z, e = _data(700, 90, 8)
    assert torch.equal(search(z, e), nearest_code_plain(z, e))
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes}
    assert "vqkit.nearest_code.default" in targets
    assert not any("matmul" in t or "argmin" in t for t in targets), targets


INTERPRET_SCRIPT = """
import json, torch
from vqkit.search import nearest_code
cases = json.loads(input())
out = []
for n, k, d, seed in cases:
    g = torch.Generator().manual_seed(seed)
    z, e = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    if seed == 99:  # exact ties across codebook tiles
        e[k - 1] = e[2]
        z[:2] = e[2]
    if seed == 77:  # non-finite latents and codes
        e[3, 0], e[k - 1, d - 1] = float("nan"), float("inf")
        z[1, d // 2], z[4, 0] = float("nan"), float("-inf")
    out.append(nearest_code(z, e, backend="triton").tolist())
print(json.dumps(out))
"""


def test_triton_kernel_in_the_triton_interpreter() -> None:
    pytest.importorskip("triton")
    # (N, K, D, seed): K not a tile multiple, odd D, N below a tile, K = 1, D past one register block, ties.
    cases = [(200, 300, 64, 0), (130, 257, 17, 1), (1, 1, 3, 2), (70, 40, 200, 3), (150, 260, 32, 99)]
    cases.append((150, 260, 32, 77))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRET_SCRIPT],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    results = json.loads(proc.stdout.splitlines()[-1])
    for (n, k, d, seed), codes in zip(cases, results):
        g = torch.Generator().manual_seed(seed)
        z, e = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
        if seed == 99:
            e[k - 1] = e[2]
            z[:2] = e[2]
            assert codes[:2] == [2, 2]
        if seed == 77:
            z, e = _with_non_finite(n, k, d, seed)
            assert codes == nearest_code_chunked(z, e).tolist()
            continue
        assert_nearest(torch.tensor(codes, dtype=torch.int64), z, e)


def test_tiles_are_chosen_per_architecture_and_width() -> None:
    pytest.importorskip("triton")
    from vqkit.search_triton import SHARED_BYTES, arch_family, kernel_config

    assert arch_family((8, 0)) == arch_family((8, 6)) == "sm80"
    assert arch_family((9, 0)) == arch_family((10, 0)) == "sm90"
    for capability in ((8, 0), (8, 9), (9, 0)):
        for precision in ("ieee", "tf32x3"):
            for d in (1, 3, 16, 17, 64, 100, 128, 129, 256, 1000):
                cfg = kernel_config(d, precision, capability)
                for key in ("BLOCK_N", "BLOCK_K", "BLOCK_D"):
                    assert cfg[key] >= 16 and cfg[key] & (cfg[key] - 1) == 0, (d, cfg)  # tl.dot's needs
                assert cfg["ONE_D_BLOCK"] == (d <= 128) and (not cfg["ONE_D_BLOCK"] or cfg["BLOCK_D"] >= d)
                # z tile + codebook tile per pipeline stage, fp32 (tf32x3 keeps two halves of each)
                tile = (cfg["BLOCK_N"] + cfg["BLOCK_K"]) * cfg["BLOCK_D"] * 4
                assert tile * cfg["num_stages"] <= SHARED_BYTES[arch_family(capability)]
    # The tiles that spilled: sm_80's exact product at D = 64 and past one block, H100's loop over D.
    assert kernel_config(64, "ieee", (8, 0))["BLOCK_K"] < kernel_config(64, "ieee", (9, 0))["BLOCK_K"]
    assert kernel_config(256, "ieee", (8, 0))["BLOCK_D"] == 16
    assert kernel_config(256, "ieee", (9, 0))["BLOCK_N"] == 128
    with pytest.raises(ValueError, match="precision"):
        kernel_config(64, "tf32")


# The cells that spilled before tiles were chosen per architecture, and the one H100 cell checked before;
# benchmarks/kernel_spills.py checks every cell of the table.
COMPILE_CHECKS = [((9, 0), "ieee", 64), ((9, 0), "ieee", 256), ((8, 0), "ieee", 64), ((8, 0), "ieee", 256)]
COMPILE_CHECKS += [((8, 0), "tf32x3", 128), ((8, 0), "tf32x3", 256)]


@pytest.mark.parametrize(("capability", "precision", "d"), COMPILE_CHECKS)
def test_triton_kernel_compiles_without_spills_and_without_a_gpu(
    capability: tuple[int, int], precision: str, d: int
) -> None:
    """Lowers the kernel through Triton's real CUDA pipeline (ptxas included) for sm_80 / sm_90: catches what
    the interpreter cannot (layouts, dot lowering, register allocation). Needs no GPU, only Triton's ptxas."""
    pytest.importorskip("triton")
    from vqkit.search_triton import SHARED_BYTES, arch_family, ptxas_report

    try:
        report = ptxas_report(d, precision, capability)
    except (RuntimeError, FileNotFoundError) as err:  # no CUDA toolchain shipped with this Triton
        if "ptxas" in str(err) and ("not found" in str(err).lower() or "No such file" in str(err)):
            pytest.skip(f"Triton's ptxas is missing: {err}")
        raise
    assert report["spill_stores"] == 0 and report["spill_loads"] == 0, report
    assert 0 < report["registers"] <= 255
    assert report["shared"] <= SHARED_BYTES[arch_family(capability)]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
@pytest.mark.parametrize(("n", "k", "d"), [*SHAPES, (65536, 8192, 64), (20000, 16384, 32), (4096, 300, 256)])
def test_triton_kernel_on_cuda(
    n: int, k: int, d: int, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    z, e = _data(n, k, d)
    z, e = z.cuda(), e.cuda()
    monkeypatch.setenv("VQKIT_SEARCH_PRECISION", precision)
    codes = nearest_code(z, e, backend="triton")
    ref = nearest_code_plain(z, e)
    differ = codes != ref
    assert differ.float().mean().item() <= 0.01
    # Only near-ties may differ: the fp64 distances of the two picks agree up to fp32 rounding.
    zd, ed = z.double(), e.double()
    gap = ((zd - ed[codes]) ** 2).sum(1) - ((zd - ed[ref]) ** 2).sum(1)
    scale = (zd**2).sum(1) + (ed**2).sum(1).max()
    assert bool(gap.abs()[differ].le(1e-5 * scale[differ]).all())


@pytest.mark.gpu
def test_auto_search_on_cuda_needs_no_n_by_k_memory() -> None:
    z, e = _data(65536, 8192, 64)
    z, e = z.cuda().requires_grad_(), e.cuda()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        codes = nearest_code(z, e)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 64 * 2**20  # the N x K matrix would be 2 GiB
    assert torch.equal(codes, nearest_code(z, e, backend="triton"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton", "chunked", "plain"])
def test_non_finite_rule_on_cuda(backend: str) -> None:
    z, e = _with_non_finite(5000, 700, 64)
    codes = nearest_code(z.cuda(), e.cuda(), backend=backend).cpu()
    _assert_non_finite_rule(codes, z, e)
