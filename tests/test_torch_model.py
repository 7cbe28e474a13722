"""The PyTorch backend against transformers' GPT2LMHeadModel, and against itself (cache, attention paths, dtypes).

Tolerances. The checkpoints (conftest.py) have activations of order 1 and logits of order 10. In float32
(unit roundoff 6e-8) the two implementations sum the same products in different orders; over a few
layers of n_embd-long dot products that leaves ~1e-5 (measured: <= 1.1e-5 on every shape, logits and
hidden states), so 2e-4 gives 20x headroom and still catches any real mistake (a wrong GELU, a missing
bias or a misaligned mask moves logits by 1e-2 or more on these checkpoints). In float64 the same argument gives ~1e-14
(measured: <= 2e-14); 1e-9 leaves a wide margin and is still five orders below any real mistake.
"""

import functools

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.nn.utils import prune
from torch.utils._python_dispatch import TorchDispatchMode

from gpt2_torch import GPT, LayerNorm, FewRowLinear, resolve_device
from gpt2_torch.few_row_products import ONEDNN_LINEAR, onednn_switch
from weights.sampling import sample_next
from tests.strategies import SAMPLING, torch_threads

TOLERANCE = {"float32": 2e-4, "float64": 1e-9}  # see the module docstring


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@functools.cache
def load(path, dtype="float32") -> GPT:
    return GPT.from_pretrained(path, dtype=dtype)


@functools.cache
def load_hf(checkpoint, dtype="float32"):
    return checkpoint.hf_model(dtype)


def random_ids(checkpoint, B, T, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, checkpoint.vocab_size, size=(B, T))  # (B, T)


def max_diff(a, b) -> float:
    return (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max().item()


def hf_forward(checkpoint, idx, dtype="float32"):
    with torch.no_grad():
        return load_hf(checkpoint, dtype)(torch.as_tensor(idx), output_hidden_states=True)


def set_flash(model, flash: bool):
    for block in model.h:
        block.attn.flash = flash


# --- the forward pass against transformers ----------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logits_equal_transformers_at_every_position(checkpoint, dtype):
    idx = random_ids(checkpoint, 2, checkpoint.block_size)  # (2, block_size): every position embedding is used
    logits = load(checkpoint.path, dtype).trace(idx)["logits"]
    expected = hf_forward(checkpoint, idx, dtype).logits
    assert logits.dtype == getattr(torch, dtype)
    assert logits.shape == expected.shape == (2, checkpoint.block_size, checkpoint.vocab_size)
    assert max_diff(logits, expected) <= TOLERANCE[dtype]


def test_trace_has_every_activation_in_order(checkpoint):
    B, T, C = 2, 7, checkpoint.n_embd
    trace = load(checkpoint.path).trace(random_ids(checkpoint, B, T))
    block_names = [f"h.{i}{part}" for i in range(checkpoint.n_layer) for part in (".ln_1", ".attn", ".ln_2", ".mlp", "")]
    assert list(trace) == ["embed", *block_names, "ln_f", "logits"]
    for name, activation in trace.items():
        expected = (B, T, checkpoint.vocab_size) if name == "logits" else (B, T, C)
        assert tuple(activation.shape) == expected, name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trace_hidden_states_equal_transformers(checkpoint, dtype):
    """transformers' hidden_states[i] is the input of block i (our embed, then h.{i-1}); its last entry is
    taken after the final LayerNorm, so it is our ln_f, not h.{n_layer-1}. Same tolerances as the logits."""
    idx = random_ids(checkpoint, 2, 20, seed=1)
    trace = load(checkpoint.path, dtype).trace(idx)
    hidden = hf_forward(checkpoint, idx, dtype).hidden_states
    ours = ["embed"] + [f"h.{i}" for i in range(checkpoint.n_layer - 1)] + ["ln_f"]
    assert len(hidden) == len(ours) == checkpoint.n_layer + 1
    for name, theirs in zip(ours, hidden):
        assert max_diff(trace[name], theirs) <= TOLERANCE[dtype], name


def test_forward_returns_the_last_position_of_the_trace(checkpoint):
    """model(idx) is nanoGPT's inference forward: logits (B, 1, V) of the last position only. In float64
    the one-row and the all-rows lm_head matmuls may round differently, by ~1e-15; 1e-12 allows that only."""
    model, idx = load(checkpoint.path, "float64"), random_ids(checkpoint, 2, 11, seed=2)
    with torch.no_grad():
        logits = model(torch.from_numpy(idx))
    assert logits.shape == (2, 1, checkpoint.vocab_size)
    assert max_diff(logits, model.trace(idx)["logits"][:, -1:, :]) <= 1e-12


# --- LayerNorm ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2**-7)])
def test_layer_norm_equals_the_formula_in_float64(bias, dtype, tolerance):
    """The LayerNorm module (F.layer_norm) against (x - mean) / sqrt(var + 1e-5) * weight + bias written out in
    float64, on inputs far from zero mean (offset 5, scale 3) so that a variance computed without subtracting
    the mean would show. Relative error, |y - exact| / max(|exact|, 1): float32 sums in another order, and
    the offset costs the centring a few bits: measured 1.5e-6 (float64: 1.4e-15). bfloat16 is normalised in
    float32 and rounded once to bfloat16: at most 2^-9 relative, measured 0.004; 2^-7 still catches a mean
    and variance taken in bfloat16 itself (measured 0.022-0.028)."""
    generator = torch.Generator().manual_seed(0)
    C = 80
    ln = LayerNorm(C, bias=bias).to(dtype)
    with torch.no_grad():
        ln.weight.copy_(1 + torch.randn(C, generator=generator))
        if bias:
            ln.bias.copy_(torch.randn(C, generator=generator))
    assert (ln.bias is None) == (not bias)
    x = (5 + 3 * torch.randn(4, 9, C, generator=generator)).to(dtype)  # (B, T, C)
    x64, w64 = x.double(), ln.weight.detach().double()
    x_hat = (x64 - x64.mean(-1, keepdim=True)) / torch.sqrt(x64.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = x_hat * w64 + (ln.bias.detach().double() if bias else 0)
    with torch.no_grad():
        y = ln(x)
    assert y.dtype == dtype
    assert ((y.double() - expected).abs() / expected.abs().clamp(min=1)).max().item() <= tolerance


# --- FewRowLinear: the few-row kernels of decoding on a CPU -------------------------------------------------

def random_linear(n_in, n_out, bias, dtype, stored_in_out=False, seed=0, rows=1):
    """A FewRowLinear with weights N(0, 1/n_in), its weight stored (out, in) or (in, out) (as from_pretrained stores
    c_attn and c_fc in float32), and rows x (rows, 1, n_in) N(0, 1): outputs of order 1."""
    generator = torch.Generator().manual_seed(seed)
    linear = FewRowLinear(n_in, n_out, bias=bias)
    weight = torch.randn(n_out, n_in, generator=generator) / n_in**0.5
    linear.weight = torch.nn.Parameter(weight.t().contiguous().t() if stored_in_out else weight)
    if bias:
        linear.bias = torch.nn.Parameter(torch.randn(n_out, generator=generator))
    return linear.to(dtype), torch.randn(rows, 1, n_in, generator=generator).to(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_product_weights_are_stored_as_their_kernels_read_them_fastest(small_checkpoint, dtype):
    """float32 and float64 on the CPU: each product's weight with its longer side contiguous, a square one
    (out, in) (from_pretrained; measured in BENCHMARKS.md): c_attn, c_fc and wte (the lm_head's out is
    vocab_size) stored (in, out), attn.c_proj and mlp.c_proj (out, in). Half precision: (out, in) for all.
    nn.Linear sees (out, in) whatever the storage (the logits tests check the values)."""
    model = load(small_checkpoint.path, dtype)
    block = model.h[0]
    in_out = dtype != "bfloat16"
    stored_in_out = {block.attn.c_attn: in_out, block.mlp.c_fc: in_out, model.lm_head: in_out,
                     block.attn.c_proj: False, block.mlp.c_proj: False}
    for linear, transposed in stored_in_out.items():
        w = linear.weight
        assert w.shape == (linear.out_features, linear.in_features)
        assert (w.t() if transposed else w).is_contiguous(), (linear, dtype)
    assert model.lm_head.weight is model.wte.weight  # tied, one copy


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("n_out", [3, 96, 97])  # divisible by 3 only, by 2 and 3, by neither
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stored_in_out", [False, True])
@pytest.mark.parametrize("rows", [1, 5])
def test_row_blocks_product_equals_f_linear(blocks, n_out, bias, stored_in_out, rows):
    """FewRowLinear.row_blocks_product (the weight's rows in blocks, a batched product, the rows left over on their
    own) against F.linear, in float32, for either memory layout of the weight. Each output is the same
    64-term dot product in both, summed by other kernels: outputs of order 1 land ~1e-7 apart (64
    roundings of 6e-8); 1e-5 still catches a block multiplied by the wrong rows, or a bias added twice or
    not at all, or a row's outputs put in another row (errors of order 1)."""
    linear, x = random_linear(64, n_out, bias, torch.float32, stored_in_out, rows=rows)
    with torch.no_grad():
        y = linear.row_blocks_product(x, blocks)
        assert y.shape == (rows, 1, n_out)
        assert max_diff(y, F.linear(x, linear.weight, linear.bias)) <= 1e-5
        row = x[0, 0]  # (in,): a 1-D row gives a 1-D (out,) result
        assert max_diff(linear.row_blocks_product(row, blocks), F.linear(row, linear.weight, linear.bias)) <= 1e-5


def test_row_blocks_are_made_once_and_follow_the_weight():
    """The row-block views (RowBlocks) are made at the first product without autograd and used again; a weight
    given new memory (`param.data = ...`, as model.to() does), a new parameter or another number of blocks gets
    new views, so the product always multiplies the module's current weight; .to() lets the old views go. With
    autograd on, each call makes its own views and the gradient reaches the weight. Tolerances: the row blocks'
    1e-5 (test_row_blocks_product_equals_f_linear); the gradient is a sum of one row: 1e-6."""
    linear, x = random_linear(64, 97, True, torch.float32)
    with torch.no_grad():
        assert max_diff(linear.row_blocks_product(x, 2), F.linear(x, linear.weight, linear.bias)) <= 1e-5
        plan = linear.row_blocks
        linear.row_blocks_product(x, 2)
        assert linear.row_blocks is plan  # used again
        linear.row_blocks_product(x, 3)
        assert linear.row_blocks is not plan and linear.row_blocks.blocks == 3
        linear.weight.data = -linear.weight.data  # new memory, the same parameter
        assert max_diff(linear.row_blocks_product(x, 3), F.linear(x, linear.weight, linear.bias)) <= 1e-5
        linear.bias = torch.nn.Parameter(torch.zeros(97))  # a new parameter
        assert max_diff(linear.row_blocks_product(x, 3), F.linear(x, linear.weight, None)) <= 1e-5
    linear.double()
    assert linear.row_blocks is None
    linear.float()
    linear.row_blocks_product(x, 2).sum().backward()  # autograd on
    assert linear.row_blocks is None  # views made for the call only
    assert max_diff(linear.weight.grad, x.reshape(1, 64).expand(97, 64)) <= 1e-6  # d(sum of x W^T + b)/dW


@pytest.mark.parametrize("computed", ["prune", "weight_norm"])
def test_a_computed_weight_takes_nn_linear(computed):
    """A pruned or parametrized weight is computed at each call, not stored in the module's dict (where
    FewRowLinear reads its parameters): the product is nn.Linear's own over the computed weight, as before
    pruning. Same kernel, same sums: 1e-6 for outputs of order 1 (the row blocks' bound is 1e-5)."""
    linear, x = random_linear(64, 97, True, torch.float32)
    if computed == "prune":
        prune.l1_unstructured(linear, "weight", amount=0.5)  # half the weights zeroed by a mask
    else:
        torch.nn.utils.parametrizations.weight_norm(linear)
    assert linear.stored_parameters() is None
    with torch.no_grad(), torch_threads(2):
        assert max_diff(linear(x), F.linear(x, linear.weight, linear.bias)) <= 1e-6
    if computed == "prune":
        assert (linear.weight == 0).float().mean() == 0.5


class RecordProducts(TorchDispatchMode):
    """Records each matrix product torch runs, with whether oneDNN was on at that moment. In inference mode
    nn.Linear's own product reaches a dispatch mode whole, as linear; elsewhere as the addmm it becomes."""

    PRODUCTS = {"linear", "addmm", "mm", "bmm", "baddbmm", "mv", "addmv", "_linear_pointwise"}

    def __init__(self):
        super().__init__()
        self.products = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.PRODUCTS:
            self.products.append((func.overloadpacket.__name__, torch.backends.mkldnn.enabled))
        return func(*args, **(kwargs or {}))


def products_of(linear, x, threads, mode="no_grad"):
    """The products linear(x) runs, in inference mode (as generate_tokens), under no_grad, or with autograd on."""
    context = {"inference": torch.inference_mode(), "no_grad": torch.no_grad(), "grad": torch.enable_grad()}[mode]
    with torch_threads(threads), context, RecordProducts() as record:
        linear(x)
    return record.products


@pytest.mark.parametrize("stored_in_out", [False, True])
def test_linear_takes_the_row_blocks_for_one_float32_row_and_onednn_for_more(stored_in_out):
    """Which kernel runs, on 2 threads: the row blocks' batched product for one row (97 weight rows: 2 blocks of
    48 and one on its own); in inference mode oneDNN's product for 2, 16 and 17 rows. Where oneDNN cannot serve
    (autograd on, no_grad, which leaves forward-mode AD on, or oneDNN switched off), the row blocks up to 16 rows
    and nn.Linear's own beyond. nn.Linear's own for one thread and for float64. Each result equals F.linear's
    within the row blocks' bound, 1e-5: the same 64-term sums in another order
    (test_row_blocks_product_equals_f_linear), also for rows of a (B, T, C) input and for a bias that is a
    strided view (oneDNN reads a bias as contiguous)."""
    if not torch.backends.mkl.is_available():
        pytest.skip("the row blocks are for MKL's batched product")
    if ONEDNN_LINEAR is None:
        pytest.skip("this torch has no oneDNN")
    linear, x = random_linear(64, 97, True, torch.float32, stored_in_out)
    row_blocks, onednn, own = [("baddbmm", True), ("addmm", True)], [("_linear_pointwise", True)], [("addmm", True)]
    assert products_of(linear, x, threads=2, mode="inference") == [("baddbmm", True), ("linear", True)]
    for rows in (2, 16, 17):
        assert products_of(linear, x.repeat(rows, 1, 1), threads=2, mode="inference") == onednn
    assert products_of(linear, x, threads=2) == row_blocks
    for mode in ("grad", "no_grad"):
        assert products_of(linear, x.repeat(16, 1, 1), threads=2, mode=mode) == row_blocks
        assert products_of(linear, x.repeat(17, 1, 1), threads=2, mode=mode) == own
    saved, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
    try:
        without_onednn = [("baddbmm", False), ("linear", False)]
        assert products_of(linear, x.repeat(16, 1, 1), threads=2, mode="inference") == without_onednn
        assert products_of(linear, x.repeat(17, 1, 1), threads=2, mode="inference") == without_onednn[1:]
    finally:
        torch.backends.mkldnn.enabled = saved
    assert products_of(linear, x, threads=1) == own
    assert products_of(linear.double(), x.double(), threads=2) == own
    linear.float()
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode(), torch_threads(2):
        for rows in (1, 2, 16, 17):
            xs = torch.randn(rows, 3, 64, generator=generator)[:, 1:2]  # not contiguous
            assert max_diff(linear(xs), F.linear(xs, linear.weight, linear.bias)) <= 1e-5, rows
        xs = torch.randn(3, 5, 64, generator=generator)  # (B, T, C): 15 rows
        assert max_diff(linear(xs), F.linear(xs, linear.weight, linear.bias)) <= 1e-5
        for strided in (torch.randn(2 * 97, generator=generator)[::2], torch.randn(1, generator=generator).expand(97)):
            linear.bias = torch.nn.Parameter(strided, requires_grad=False)  # a view, as a user may set it
            assert not linear.bias.is_contiguous()
            assert max_diff(linear(xs), F.linear(xs, linear.weight, strided)) <= 1e-5
        linear.bias = None
        assert max_diff(linear(x.repeat(8, 1, 1)), F.linear(x.repeat(8, 1, 1), linear.weight)) <= 1e-5


# torch.autograd.forward_ad's first import scripts a helper with torch.jit.script, which warns of its own deprecation
@pytest.mark.filterwarnings("ignore:.torch.jit.script. is deprecated:FutureWarning")
def test_linear_keeps_forward_mode_tangents_and_nn_linears_shape_errors():
    """Forward-mode AD runs under no_grad too: a product of several float32 rows there carries the tangent
    (F.linear's, within the row blocks' 1e-5), which oneDNN's operator would drop. And an input whose last
    dimension is not in_features gets nn.Linear's own error, not one from a kernel that read it as other rows."""
    import torch.autograd.forward_ad as forward_ad

    linear, x = random_linear(64, 97, True, torch.float32, rows=4)
    tangent = torch.randn_like(x)
    with torch.no_grad(), torch_threads(2), forward_ad.dual_level():
        y = forward_ad.unpack_dual(linear(forward_ad.make_dual(x, tangent)))
        assert y.tangent is not None
        assert max_diff(y.tangent, F.linear(tangent, linear.weight)) <= 1e-5
    for shape in ((4, 2), (2, 128), (3, 5)):
        with torch.inference_mode(), pytest.raises(RuntimeError, match="cannot be multiplied"):
            linear(torch.randn(*shape))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("onednn", [True, False])
def test_linear_multiplies_one_half_precision_row_with_onednn_off_and_restores_it(dtype, onednn):
    """A half-precision row is multiplied with oneDNN off, and the flag is then as it was; two rows keep it.
    Both kernels sum in float32 and round once to the dtype: outputs of order 1 (|y| < 4 here) differ by at
    most an ulp, 2^-6 in bfloat16; 0.05 still catches a wrong row or a lost bias."""
    linear, x = random_linear(64, 96, True, dtype)
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = onednn
    try:
        assert products_of(linear, x, threads=2) == [("addmm", False)]
        assert torch.backends.mkldnn.enabled == onednn
        assert products_of(linear, torch.cat([x, x], dim=1), threads=2) == [("addmm", onednn)]
        with torch.no_grad():
            assert max_diff(linear(x), F.linear(x, linear.weight, linear.bias)) <= 0.05
    finally:
        torch.backends.mkldnn.enabled = saved


def test_a_failing_half_precision_product_still_restores_onednn():
    """The oneDNN flag and its lock are released when the product raises (here: a row one element too long)."""
    linear, _ = random_linear(64, 96, True, torch.bfloat16)
    saved = torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError):
        linear.product_without_onednn(torch.ones(1, 1, 65, dtype=torch.bfloat16))
    assert torch.backends.mkldnn.enabled == saved
    assert not onednn_switch.locked()


@pytest.mark.parametrize("batch", [1, 4])
def test_decoding_on_two_threads_gives_the_traced_logits(small_checkpoint, batch):
    """Every step of a cached decode of 1 and of 4 sequences on 2 threads (FewRowLinear's row blocks, for one
    row and for a few) against the logits of one forward pass over the whole sequences on 1 thread (the plain
    kernels), in float32: the same sums in other orders, so TOLERANCE["float32"] of the module docstring."""
    model, idx = load(small_checkpoint.path), random_ids(small_checkpoint, batch, 12, seed=5)
    with torch.no_grad():
        expected = model.trace(idx)["logits"]  # (B, 12, V)
        model.allocate_kv_cache(batch)
        try:
            with torch_threads(2):
                steps = [model(torch.from_numpy(idx[:, t : t + 1]), start=t) for t in range(idx.shape[1])]
        finally:
            model.kv_cache = None
    assert max_diff(torch.cat(steps, dim=1), expected) <= TOLERANCE["float32"]


# --- the two attention paths -------------------------------------------------------------------------

def test_sdpa_and_manual_attention_agree_in_prefill(checkpoint):
    """The fused kernel and the spelled-out masked softmax, in float64: both are the same sums, reordered,
    so they agree to ~1e-14; 1e-9 is the float64 bound of this file."""
    model, idx = load(checkpoint.path, "float64"), random_ids(checkpoint, 2, checkpoint.block_size, seed=3)
    try:
        set_flash(model, True)
        fused = model.trace(idx)
        set_flash(model, False)
        manual = model.trace(idx)
    finally:
        set_flash(model, True)
    for name in fused:
        assert max_diff(fused[name], manual[name]) <= 1e-9, name


def chunked_logits(model, idx, cuts) -> torch.Tensor:
    """Logits (B, T, V) of idx run through the KV cache in chunks idx[:, cuts[j]:cuts[j+1]]: every chunk after
    the first starts at start > 0, and a chunk with T > 1 at start > 0 needs the bottom-right-aligned mask."""
    model.allocate_kv_cache(idx.shape[0])
    pieces = []
    try:
        with torch.no_grad():
            for start, end in zip(cuts[:-1], cuts[1:]):
                activations = {}
                model(torch.from_numpy(idx[:, start:end]), start, trace=activations)
                pieces.append(activations["logits"])  # (B, end - start, V)
    finally:
        model.kv_cache = None
    return torch.cat(pieces, dim=1)  # (B, T, V)


@pytest.mark.parametrize("flash", [True, False])
def test_cached_chunks_equal_one_full_forward(checkpoint, flash):
    """Prefill, single-token steps and multi-token chunks at start > 0, through the cache, on both attention
    paths, against one uncached forward in float64 (same sums, so ~1e-14 apart; bound 1e-9)."""
    model, T = load(checkpoint.path, "float64"), checkpoint.block_size
    idx = random_ids(checkpoint, 2, T, seed=4)
    cuts = [0, 5, 6, 17, 18, T - 9, T]  # chunks of 5, 1, 11, 1, ..., 9 tokens, the last one filling the block
    try:
        set_flash(model, flash)
        logits = chunked_logits(model, idx, cuts)
    finally:
        set_flash(model, True)
    assert max_diff(logits, model.trace(idx)["logits"]) <= 1e-9


# --- half precision ----------------------------------------------------------------------------------

# bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%), float16 11 bits (0.05%). Through a few
# layers of matmuls and the residual stream that grows to ~2% (bfloat16) and ~0.3% (float16) of the logits'
# scale (|logits| <= ~10 here): measured max abs diffs from float32 of 0.16 and 0.03. The bounds allow
# ~3x that; a real mistake (e.g. a LayerNorm overflowing in half precision) gives NaN or errors of order 1.
HALF_TOLERANCE = {"bfloat16": 0.5, "float16": 0.1}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_close_to_float32(checkpoint, dtype):
    idx = random_ids(checkpoint, 2, checkpoint.block_size, seed=5)
    model = load(checkpoint.path, dtype)
    trace = model.trace(idx)
    assert all(activation.dtype == getattr(torch, dtype) for activation in trace.values())
    assert max_diff(trace["logits"], load(checkpoint.path).trace(idx)["logits"]) <= HALF_TOLERANCE[dtype]
    tokens = model.generate(idx[:, :4], 3, temperature=0.8, rng=np.random.default_rng(0))
    assert tokens.shape == (2, 7)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_decoding_with_its_float32_cache_gives_the_traced_logits(small_checkpoint, dtype):
    """A half-precision model on the CPU keeps its KV cache in float32 (q, k and v converted before they are
    cached, the attention's output converted back): every cached step's logits against one forward pass over
    the whole sequences in the same dtype. The two round differently (the cache keeps float32 keys, the pass
    half-precision ones), so HALF_TOLERANCE, the bound against float32; a key or value left unconverted fails
    with an error, a wrong position with errors of order 1."""
    model, idx = load(small_checkpoint.path, dtype), random_ids(small_checkpoint, 2, 12, seed=6)
    with torch.no_grad():
        expected = model.trace(idx)["logits"].float()  # (B, 12, V)
        model.allocate_kv_cache(2)
        try:
            assert model.kv_cache[0].k.dtype == torch.float32
            steps = [model(torch.from_numpy(idx[:, t : t + 1]), start=t) for t in range(idx.shape[1])]
        finally:
            model.kv_cache = None
    logits = torch.cat(steps, dim=1)
    assert logits.dtype == getattr(torch, dtype)
    assert max_diff(logits.float(), expected) <= HALF_TOLERANCE[dtype]


# --- generation --------------------------------------------------------------------------------------

def naive_generate(model, idx, max_new_tokens, rng, temperature, top_k=None, top_p=None):
    """nanoGPT's generate loop without a cache: crop to block_size, full forward, sample the last position."""
    block_size = model.config.block_size
    with torch.no_grad():
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -block_size:]  # (B, <= block_size)
            logits = model(torch.from_numpy(idx_cond))[:, -1, :]  # (B, V)
            next_ids = sample_next(logits.float().numpy(), rng, temperature, top_k, top_p)  # (B,)
            idx = np.concatenate([idx, next_ids[:, None]], axis=1)  # (B, T + 1)
    return idx


@pytest.mark.parametrize("options", SAMPLING.values(), ids=SAMPLING.keys())
def test_cached_generation_equals_uncached_and_a_naive_loop(checkpoint, options):
    """Token for token, with B = 2. 10 + 64 tokens pass block_size on "odd" (48) and "tall" (64), so that
    the crop path runs there: the window slides and the cache is rebuilt every step."""
    model, prompt = load(checkpoint.path), random_ids(checkpoint, 2, 10, seed=6)
    n = 64
    cached = model.generate(prompt, n, rng=np.random.default_rng(7), use_cache=True, **options)
    uncached = model.generate(prompt, n, rng=np.random.default_rng(7), use_cache=False, **options)
    naive = naive_generate(model, prompt, n, np.random.default_rng(7), **options)
    assert cached.shape == (2, 10 + n)
    np.testing.assert_array_equal(cached[:, :10], prompt)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached, naive)
    assert model.kv_cache is None  # freed after generation


def test_batch_rows_are_generated_independently(checkpoint):
    """Greedy B = 2 generation equals generating each row alone (no leak between rows of the batch or cache)."""
    model, prompt = load(checkpoint.path), random_ids(checkpoint, 2, 6, seed=8)
    n = 50  # through the crop path on "odd" (block_size 48)
    batch = model.generate(prompt, n, temperature=0)
    for row in range(2):
        np.testing.assert_array_equal(batch[row : row + 1], model.generate(prompt[row : row + 1], n, temperature=0))


def test_generate_keeps_nanogpt_tensor_signature(small_checkpoint):
    model = load(small_checkpoint.path)
    idx = torch.from_numpy(random_ids(small_checkpoint, 1, 3))
    out = model.generate(idx, 4, temperature=0.8, top_k=200)
    assert torch.is_tensor(out) and out.shape == (1, 7) and torch.equal(out[:, :3], idx)


def test_greedy_equals_transformers_generate(checkpoint):
    """temperature 0 against transformers' greedy search for 20 tokens. eos_token_id=None, or it would stop at
    <|endoftext|> (50256, inside the full vocabulary); the length check proves that it did not stop early."""
    model, prompt = load(checkpoint.path), random_ids(checkpoint, 2, 8, seed=9)
    ours = model.generate(prompt, 20, temperature=0)
    prompt_t = torch.from_numpy(prompt)
    with torch.no_grad():
        theirs = load_hf(checkpoint).generate(
            prompt_t, attention_mask=torch.ones_like(prompt_t), max_new_tokens=20, do_sample=False,
            eos_token_id=None, pad_token_id=None,
        )  # fmt: skip
    assert theirs.shape == (2, 28)
    np.testing.assert_array_equal(ours, theirs.numpy())


# --- devices and dtypes ------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_absent_cuda_is_a_clear_error(small_checkpoint):
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="CUDA is not available"):
        GPT.from_pretrained(small_checkpoint.path, device="cuda")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is present here")
def test_absent_mps_is_a_clear_error():
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["banana", "cuda:x", "meta"])
def test_unknown_device_is_a_clear_error(name):
    with pytest.raises(ValueError, match=f"'{name}'"):
        resolve_device(name)


def test_cpu_device_resolves():
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_dtype_is_a_clear_error(small_checkpoint):
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        GPT.from_pretrained(small_checkpoint.path, dtype="int8")
