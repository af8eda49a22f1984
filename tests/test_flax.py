"""Flax (JAX) LSTM cells and GRUCells: the converters refnorm.interop.from_flax / to_flax and
refnorm.validate on flax.linen.LSTMCell, flax.linen.OptimizedLSTMCell, flax.nnx.LSTMCell,
flax.nnx.OptimizedLSTMCell, flax.linen.GRUCell and flax.nnx.GRUCell (refnorm.GRU, reset after;
nnx's has no b_hn), with Flax's own RNN (seq_lengths) and jax.vjp giving the gradients.

Tolerances, each with its reason:
* round trips are compared bit for bit (assert_array_equal): the converters only split,
  concatenate and copy gate blocks (Flax's gate order is refnorm's), no arithmetic.
* a GRUCell stepped by hand against refnorm.GRU.forward: 1e-12 relative, the same equations in
  another order (rounding only, measured ~1e-16); a misplaced b_hn differs by O(0.1).
* validate uses its own table (refnorm.validation.TOLERANCE, by the module's dtype): 1e-10 for a
  float64 module (the same equations in another order, rounding only; measured ~1e-15), 1e-4
  for float32 (eps32 amplified through T steps).
Every weight, bias, initial state and upstream gradient is random and non-zero (refnorm.randomize
for the cells, validate's own draw for the data); the ragged lengths include a length-1 sequence.
JAX's x64 mode is switched on for each test and restored after it (it is process-wide).
"""
import inspect
import os

import numpy as np
import pytest

try:
    import flax
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from flax import nnx
except ImportError:                       # CI installs both (the test extra): fail there
    if os.environ.get("CI"):
        raise
    pytest.skip("jax and flax are not installed: pip install jax flax", allow_module_level=True)

import refnorm  # noqa: E402
from refnorm import interop  # noqa: E402
from refnorm.cli import main  # noqa: E402
from refnorm.gradcheck import randomize  # noqa: E402
from refnorm.interop import flax_gru, flax_lstm, flax_rnn  # noqa: E402
from refnorm.interop.layouts import GateLayout, canonical_names  # noqa: E402
from refnorm.validation import _FlaxAdapter, validate  # noqa: E402

D, H = 3, 4
RAGGED, FULL = [6, 2, 5, 1], [6, 6, 6, 6]
EVERY_TENSOR = {"hs", "hT", "cT", "dWx", "dWh", "db", "dx", "dh0", "dc0"}
CELLS = ("linen.LSTMCell", "linen.OptimizedLSTMCell", "nnx.LSTMCell", "nnx.OptimizedLSTMCell")


@pytest.fixture(autouse=True)
def x64():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def random_lstm(seed=0):
    return randomize(refnorm.LSTM(D, H, seed=seed), seed=seed + 1)


def flax_cell(kind, cell, param_dtype=jnp.float64, **options):
    """A Flax cell of `kind` holding `cell`'s weights: a linen one bound to its params."""
    api, name = kind.split(".")
    if api == "linen":
        module = getattr(nn, name)(H, param_dtype=param_dtype, **options)
        return module.bind({"params": interop.to_flax(cell, module)})
    module = getattr(nnx, name)(D, H, param_dtype=param_dtype, rngs=nnx.Rngs(0), **options)
    return interop.to_flax(cell, module)


def make_nnx_cell(input_size, hidden_size):
    """A factory for `refnorm validate test_flax:make_nnx_cell --randomize`."""
    return nnx.LSTMCell(input_size, hidden_size, param_dtype=jnp.float64, rngs=nnx.Rngs(1))


def failing(report):
    return {row[0] for row in report.rows if not row[-1]}


def random_leaves(tree, seed=0):
    """The same tree with every leaf N(0, 0.5²): non-zero biases too (Flax's init is zeros)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), a.dtype), tree)


def assert_same_tree(a, b):
    flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(t) for t in (a, b))
    assert flat_a[1] == flat_b[1]
    for (path, x), (_, y) in zip(flat_a[0], flat_b[0]):
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


# -- the layout, read from the installed source ----------------------------------------------------
def test_gate_order_carry_and_activations_are_flax_s():
    """FLAX_LAYOUT and FLAX_CARRY state what the installed Flax computes: gates i, f, g, o from
    the ii/hi ... io/ho pairs, `c, h = carry`, sigmoid gates, tanh; nnx's fused cell splits
    i, f, g, o."""
    assert canonical_names(flax_lstm.FLAX_LAYOUT) == ("i", "f", "g", "o")
    assert flax_lstm.FLAX_CARRY == ("c", "h")
    for cls in (nn.LSTMCell, nn.OptimizedLSTMCell, nnx.LSTMCell, nnx.OptimizedLSTMCell):
        source = inspect.getsource(cls.__call__)
        assert "c, h = carry" in source and "return (new_c, new_h), new_h" in source, cls
        assert "new_c = f * c + i * g" in source and "o * self.activation_fn(new_c)" in source
    linen = inspect.getsource(nn.LSTMCell.__call__)
    for gate, fn in zip("ifgo", ("gate_fn", "gate_fn", "activation_fn", "gate_fn")):
        assert f"{gate} = self.{fn}(dense_i(name='i{gate}')(inputs) + dense_h(name='h{gate}')(h))" \
            in linen
    assert "i, f, g, o = jnp.split(y, indices_or_sections=4, axis=-1)" in \
        inspect.getsource(nnx.OptimizedLSTMCell.__call__)
    for module in (nn.LSTMCell(H), nnx.OptimizedLSTMCell(D, H, rngs=nnx.Rngs(0))):
        assert module.gate_fn is jax.nn.sigmoid and module.activation_fn is jnp.tanh


# -- converters ----------------------------------------------------------------------------------
def test_refnorm_to_flax_and_back_is_exact_for_every_cell():
    cell = random_lstm()
    before = {k: v.copy() for k, v in cell.params.items()}
    for kind in CELLS:
        back = interop.from_flax(flax_cell(kind, cell))
        for name, value in cell.params.items():
            np.testing.assert_array_equal(back.params[name], value, err_msg=f"{kind} {name}")
    plain = interop.to_flax(cell)                         # None: linen's params dict
    assert set(plain) == {"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"}
    assert plain["ii"]["kernel"].dtype == jnp.float64
    np.testing.assert_array_equal(interop.from_flax({"params": plain}).params["b"],
                                  cell.params["b"])
    for name, value in before.items():                    # the cell is only read
        np.testing.assert_array_equal(cell.params[name], value)


def test_flax_to_refnorm_and_back_is_exact_for_every_layout():
    """From Flax's own params (every leaf redrawn non-zero) to refnorm and back into the same
    structure: linen's per-gate dict (LSTMCell and OptimizedLSTMCell share it), {'params': ...},
    nnx's per-gate state (if_) and nnx's fused OptimizedLSTMCell state."""
    x = jnp.ones((2, D))
    for cls in (nn.LSTMCell, nn.OptimizedLSTMCell):
        carry = cls(H).initialize_carry(jax.random.key(0), x.shape)
        variables = random_leaves(cls(H, param_dtype=jnp.float64).init(jax.random.key(1), carry,
                                                                       x))
        assert_same_tree(interop.to_flax(interop.from_flax(variables), variables), variables)
    for cls in (nnx.LSTMCell, nnx.OptimizedLSTMCell):
        module = cls(D, H, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        tree = random_leaves(nnx.to_pure_dict(nnx.state(module, nnx.Param)))
        assert_same_tree(interop.to_flax(interop.from_flax(tree), tree), tree)
        module = cls(D, H, param_dtype=jnp.float64, rngs=nnx.Rngs(5))
        assert interop.to_flax(interop.from_flax(tree), module) is module      # nnx: in place
        assert_same_tree(nnx.to_pure_dict(nnx.state(module, nnx.Param)), tree)


def test_to_flax_casts_to_the_target_s_dtype_and_folds_a_forget_bias():
    cell = random_lstm()
    params = interop.to_flax(cell, nn.LSTMCell(H, param_dtype=jnp.float32))
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    module = interop.to_flax(cell, nnx.OptimizedLSTMCell(D, H, rngs=nnx.Rngs(0)))   # float32
    assert module.dense_h.kernel[...].dtype == jnp.float32
    shifted = refnorm.LSTM(D, H, seed=0, forget_bias=1.0)
    randomize(shifted, seed=1)
    b = interop.from_flax(interop.to_flax(shifted)).params["b"]
    np.testing.assert_array_equal(b[H:2 * H], shifted.params["b"][H:2 * H] + 1.0)
    np.testing.assert_array_equal(b[:H], shifted.params["b"][:H])


def assert_activations_refused(name, cell, family):
    """A linen (bound) and an nnx `name` cell with gate_fn relu, then activation_fn gelu: from_flax,
    validate and to_flax of `cell` each refuse it, naming the attribute and refnorm's `family`."""
    for bad in (dict(gate_fn=jax.nn.relu), dict(activation_fn=jax.nn.gelu)):
        attr = next(iter(bad))
        for module in (getattr(nn, name)(H, **bad).bind({"params": interop.to_flax(cell)}),
                       getattr(nnx, name)(D, H, rngs=nnx.Rngs(0), **bad)):
            for call in (interop.from_flax, validate, lambda m: interop.to_flax(cell, m)):
                with pytest.raises(ValueError, match=f"{attr}=.*refuses: its {family}"):
                    call(module)


def test_refused_inputs_name_what_is_refused():
    cell = random_lstm()
    assert_activations_refused("LSTMCell", cell, "LSTM")
    with pytest.raises(ValueError, match="got MGUCell"):
        interop.from_flax(nn.MGUCell(H))
    with pytest.raises(ValueError, match="bound"):
        validate(nn.LSTMCell(H))
    with pytest.raises(ValueError, match="not its params"):
        validate(nnx.state(nnx.LSTMCell(D, H, rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match="keys"):
        interop.from_flax({"kernel": np.ones((D, 4 * H))})
    with pytest.raises(ValueError, match="features=5"):
        interop.to_flax(cell, nn.LSTMCell(5))
    with pytest.raises(ValueError, match="hidden_features"):
        interop.to_flax(cell, nnx.LSTMCell(D, 5, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="refnorm.LSTM"):
        interop.to_flax(refnorm.LNLSTM(D, H, seed=0))


def test_float64_without_x64_is_a_clear_error():
    """With x64 off JAX would silently compute in float32: to_flax of a float64 cell and a
    module whose params are float64 (NumPy arrays, which JAX has not cast yet) are refused,
    naming the fix; float32 still converts."""
    cell = random_lstm()
    numpy_params = jax.tree.map(np.asarray, interop.to_flax(cell))
    jax.config.update("jax_enable_x64", False)
    with pytest.raises(ValueError, match="jax_enable_x64"):
        interop.to_flax(cell)
    with pytest.raises(ValueError, match="x64 mode is off"):
        validate(nn.LSTMCell(H).bind({"params": numpy_params}))
    assert interop.to_flax(refnorm.LSTM(D, H, dtype="float32"))["hi"]["bias"].dtype == \
        jnp.float32


# -- validate --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, lengths", [
    pytest.param(kind, lengths, id=f"{kind}-{'ragged' if lengths == RAGGED else 'full'}")
    for kind in CELLS for lengths in (RAGGED, FULL)][:-1])
def test_every_flax_cell_passes_on_every_tensor(kind, lengths):
    """Ragged lengths (seq_lengths, the last valid carry) and full ones, for each cell (nnx's
    OptimizedLSTMCell ragged only: the fused layout is all it adds, and time is short)."""
    module = flax_cell(kind, random_lstm())
    before = interop.from_flax(module).params
    report = validate(module, lengths=lengths)
    assert report.ok and report.verdict() == "PASS", report
    assert set(report.errors) == EVERY_TENSOR
    assert report.target == f"flax.{kind}"
    for name, value in interop.from_flax(module).params.items():   # the module is not changed
        np.testing.assert_array_equal(value, before[name])


def test_a_float32_module_passes_at_float32_tolerance_only():
    report = validate(flax_cell("nnx.LSTMCell", random_lstm(), param_dtype=jnp.float32),
                      lengths=RAGGED)
    assert report.ok and report.dtype == "float32", report
    assert report.verdict() == "PASS at float32 tolerance: not a float64 check"
    # float64 params, float32 compute (the module's dtype): the least precise array decides
    strict = validate(flax_cell("linen.LSTMCell", random_lstm(), dtype=jnp.float32),
                      lengths=RAGGED, require_float64=True)
    assert strict.dtype == "float32" and all(row[-1] for row in strict.rows), strict
    assert not strict.ok and "float64 was required" in strict.verdict()


# -- planted bugs: each must FAIL, on the rows it breaks ------------------------------------------
def test_a_carry_read_as_h_c_fails(monkeypatch):
    """The adapter built and read Flax's carry as (h, c) instead of (c, h)."""
    monkeypatch.setattr(flax_lstm, "FLAX_CARRY", ("h", "c"))
    report = validate(flax_cell("linen.LSTMCell", random_lstm()), lengths=RAGGED)
    assert not report.ok
    assert {"hs", "hT", "cT", "dh0", "dc0"} <= failing(report), report
    assert "MISMATCH" in str(report) and report.verdict().startswith("FAIL")


def test_one_doubled_gradient_fails_on_its_row_alone(monkeypatch):
    """The forget gate's recurrent kernel gradient doubled: dWh fails, every other row passes."""
    convert = _FlaxAdapter.param_grads

    def doubled(self, d):
        return convert(self, {**d, "hf": {**d["hf"], "kernel": 2 * d["hf"]["kernel"]}})
    monkeypatch.setattr(_FlaxAdapter, "param_grads", doubled)
    report = validate(flax_cell("linen.OptimizedLSTMCell", random_lstm()), lengths=RAGGED)
    assert failing(report) == {"dWh"}, report
    assert report.verdict() == "FAIL: 1 tensors differ (dWh)"


def test_a_wrong_gate_order_round_trips_exactly_but_fails_validation(monkeypatch):
    """f and g swapped in the layout: the round trip cannot see it (both ways use it), the
    comparison with refnorm does."""
    monkeypatch.setattr(flax_lstm, "FLAX_LAYOUT", GateLayout(("i", "g", "f", "o"), (0, 2, 1, 3),
                                                             "wrong"))
    cell = random_lstm()
    module = flax_cell("nnx.LSTMCell", cell)
    np.testing.assert_array_equal(interop.from_flax(module).params["Wh"], cell.params["Wh"])
    report = validate(module, lengths=RAGGED)
    assert {"hs", "hT", "cT", "dWx", "dWh", "db"} <= failing(report), report


# -- the command -----------------------------------------------------------------------------------
def test_validate_command_builds_and_passes_the_flax_cells(capsys):
    assert main(["validate", "flax.linen.LSTMCell"]) == 0
    out = capsys.readouterr().out
    assert "flax.linen.LSTMCell" in out and out.rstrip().endswith("PASS")
    assert main(["validate", "test_flax:make_nnx_cell", "--randomize", "--float64"]) == 0
    assert "flax.nnx.LSTMCell" in capsys.readouterr().out


# -- the GRUCell (refnorm.GRU, reset after; nnx's has no b_hn) -------------------------------------
GRU_TENSORS = {"hs", "hT", "dWx", "dWh", "db", "db_hn", "dx", "dh0"}
LINEN_GRU_KEYS = {"ir", "iz", "in", "hr", "hz", "hn"}


def random_gru(seed=0, b_hn=True):
    """A refnorm.GRU with every parameter random and non-zero; b_hn=False: b_hn zero (the GRU
    that nnx.GRUCell computes)."""
    cell = randomize(refnorm.GRU(D, H, seed=seed), seed=seed + 1)
    if not b_hn:
        cell.params["b_hn"][...] = 0.0
    return cell


def gru_module(api, cell, param_dtype=jnp.float64, **options):
    """A Flax GRUCell of `api` holding `cell`'s weights: a linen one bound to its params."""
    if api == "linen":
        module = nn.GRUCell(H, param_dtype=param_dtype, **options)
        return module.bind({"params": interop.to_flax(cell, module)})
    module = nnx.GRUCell(D, H, param_dtype=param_dtype, rngs=nnx.Rngs(0), **options)
    return interop.to_flax(cell, module)


def make_nnx_gru(input_size, hidden_size):
    """A factory for `refnorm validate test_flax:make_nnx_gru`: random weights, b_hn zero."""
    cell = randomize(refnorm.GRU(input_size, hidden_size, seed=7), seed=8)
    cell.params["b_hn"][...] = 0.0
    module = nnx.GRUCell(input_size, hidden_size, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    return interop.to_flax(cell, module)


def assert_same_gru(a, b):
    """Bit for bit the same parameters and dtype; b's arrays are its own."""
    assert type(a) is type(b) is refnorm.GRU and a.dtype == b.dtype and b.reset == "after"
    assert (a.input_size, a.hidden_size) == (b.input_size, b.hidden_size)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
        assert not np.shares_memory(a.params[name], b.params[name])


def nnx_params(module):
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def test_gru_gate_order_and_biases_are_flax_s():
    """FLAX_ORDER and the bias placement state what the installed Flax computes: linen's
    ir/hr, iz/hz, in/hn pairs with hn's bias inside r * (...), nnx's jnp.split into r, z, n with
    no recurrent bias; sigmoid gates and tanh by default; the carry is h."""
    assert flax_gru.FLAX_ORDER == "rzn"
    linen = inspect.getsource(nn.GRUCell.__call__)
    for gate in "rz":
        assert f"{gate} = self.gate_fn(dense_i(name='i{gate}')(inputs) + " \
               f"dense_h(name='h{gate}')(h))" in linen
    assert "dense_i(name='in')(inputs) + r * dense_h(name='hn', use_bias=True)(h)" in linen
    assert "new_h = (1.0 - z) * n + z * h" in linen and "return new_h, new_h" in linen
    source = inspect.getsource(nnx.GRUCell)
    assert "xi_r, xi_z, xi_n = jnp.split(x_transformed, 3, axis=-1)" in source
    assert "hh_r, hh_z, hh_n = jnp.split(h_transformed, 3, axis=-1)" in source
    assert "n = self.activation_fn(xi_n + r * hh_n)" in source
    assert source.index("self.dense_h = Linear(") < source.index("use_bias=False")
    for module in (nn.GRUCell(H), nnx.GRUCell(D, H, rngs=nnx.Rngs(0))):
        assert module.gate_fn is jax.nn.sigmoid and module.activation_fn is jnp.tanh


def test_gru_round_trips_are_exact():
    """refnorm -> Flax -> refnorm for linen (b_hn non-zero) through every target kind, and for
    nnx (b_hn zero); Flax's own params (every leaf redrawn non-zero) -> refnorm -> the same
    structure."""
    cell, zero = random_gru(), random_gru(b_hn=False)
    plain = interop.to_flax(cell)                                 # None: linen's params dict
    assert set(plain) == LINEN_GRU_KEYS and set(plain["hr"]) == {"kernel"}
    assert set(plain["hn"]) == {"kernel", "bias"} and plain["ir"]["kernel"].dtype == jnp.float64
    for source in (plain, {"params": plain}, gru_module("linen", cell)):
        assert_same_gru(cell, interop.from_flax(source))
    module = nnx.GRUCell(D, H, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    assert interop.to_flax(zero, module) is module                # nnx: in place
    for source in (module, nnx.state(module, nnx.Param), nnx_params(module)):
        assert_same_gru(zero, interop.from_flax(source))
    x = jnp.ones((2, D))
    variables = random_leaves(nn.GRUCell(H, param_dtype=jnp.float64).init(
        jax.random.key(1), jnp.zeros((2, H)), x))
    assert_same_tree(interop.to_flax(interop.from_flax(variables), variables), variables)
    tree = random_leaves(nnx_params(module), seed=3)
    assert_same_tree(interop.to_flax(interop.from_flax(tree), tree), tree)
    assert_same_tree(interop.to_flax(interop.from_flax(tree), nnx.state(module, nnx.Param)),
                     tree)


def test_to_flax_gru_casts_to_each_target_s_dtype():
    cell = random_gru()
    params = interop.to_flax(cell, nn.GRUCell(H, param_dtype=jnp.float32))   # unbound linen
    assert set(params) == LINEN_GRU_KEYS
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    again = interop.to_flax(cell, params)                         # a params dict: its dtypes
    assert {a.dtype for a in jax.tree.leaves(again)} == {jnp.dtype("float32")}
    module = interop.to_flax(random_gru(b_hn=False), nnx.GRUCell(D, H, rngs=nnx.Rngs(0)))
    assert module.dense_h.kernel[...].dtype == jnp.float32 and "bias" not in nnx_params(
        module)["dense_h"]


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_a_gru_cell_stepped_by_hand_equals_refnorm_forward(api):
    """The Flax cell called step by step on random data equals refnorm.GRU.forward; for linen
    b_hn is non-zero, and the same cell with b_hn moved into b's n block (outside r ⊙ (...))
    differs: the test sees where b_hn sits."""
    cell = random_gru(seed=10, b_hn=api == "linen")
    module = gru_module(api, cell)
    rng = np.random.default_rng(11)
    x, h0 = rng.standard_normal((6, 4, D)), 0.5 * rng.standard_normal((4, H))
    hs, hT, _ = cell.forward(x, h0)
    carry, ys = jnp.asarray(h0), []
    for x_t in x:
        carry, y = module(carry, jnp.asarray(x_t))
        ys.append(np.asarray(y))
    np.testing.assert_allclose(np.stack(ys), hs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(carry), hT, rtol=1e-12, atol=1e-12)
    if api == "linen":
        moved = random_gru(seed=10)
        moved.params["b"][2 * H:] += moved.params["b_hn"]
        moved.params["b_hn"][...] = 0.0
        assert np.max(np.abs(moved.forward(x, h0)[0] - hs)) > 1e-3


def test_from_flax_gru_sources_and_refusals():
    cell = random_gru()
    assert_activations_refused("GRUCell", cell, "GRU")
    with pytest.raises(ValueError, match="bound"):
        interop.from_flax(nn.GRUCell(H))
    with pytest.raises(ValueError, match="nonlinearity is a SimpleCell's; these are a GRUCell"):
        interop.from_flax(interop.to_flax(cell), nonlinearity="tanh")
    bad = interop.to_flax(cell)
    bad["iz"] = {**bad["iz"], "kernel": jnp.ones((D, H + 1))}
    with pytest.raises(ValueError, match=r"iz/kernel \(D, H\) must have shape \(3, 4\)"):
        interop.from_flax(bad)
    nnx_bad = {"dense_i": {"kernel": np.ones((D, 2 * H)), "bias": np.ones(3 * H)},
               "dense_h": {"kernel": np.ones((H, 3 * H))}}
    with pytest.raises(ValueError, match=r"dense_i/kernel \(D, 3H\) must have shape"):
        interop.from_flax(nnx_bad)


def test_to_flax_gru_refusals():
    cell = random_gru()
    for target in (nnx.GRUCell(D, H, param_dtype=jnp.float64, rngs=nnx.Rngs(0)),
                   nnx_params(nnx.GRUCell(D, H, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))):
        with pytest.raises(ValueError, match="b_hn is not zero.*has no b_hn.*cannot fold"):
            interop.to_flax(cell, target)
    before = refnorm.GRU(D, H, seed=0, reset="before")
    with pytest.raises(ValueError, match='reset="after".*reset=.before.'):
        interop.to_flax(before, nn.GRUCell(H))
    with pytest.raises(ValueError, match="converts a refnorm.GRU, got LNGRU"):
        interop.to_flax(refnorm.LNGRU(D, H, seed=0))
    with pytest.raises(ValueError, match="features=5"):
        interop.to_flax(cell, nn.GRUCell(5))
    with pytest.raises(ValueError, match="hidden_features=5"):
        interop.to_flax(random_gru(b_hn=False), nnx.GRUCell(D, 5, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"kernels are \(D, 3H\) \(2, 12\)"):
        interop.to_flax(cell, {k: {f: v[:2] if k[0] == "i" and f == "kernel" else v
                                   for f, v in sub.items()}
                               for k, sub in interop.to_flax(cell).items()})
    with pytest.raises(ValueError, match="a refnorm.GRU goes into a Flax GRUCell, got LSTMCell"):
        interop.to_flax(cell, nnx.LSTMCell(D, H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="a refnorm.LSTM goes into a Flax LSTMCell or "
                                         "OptimizedLSTMCell, got GRUCell"):
        interop.to_flax(random_lstm(), nn.GRUCell(H))
    with pytest.raises(ValueError, match="a refnorm.RNN goes into a Flax SimpleCell, got GRUCell"):
        interop.to_flax(refnorm.RNN(D, H, seed=0), nnx.GRUCell(D, H, rngs=nnx.Rngs(0)))
    jax.config.update("jax_enable_x64", False)
    with pytest.raises(ValueError, match="jax_enable_x64"):
        interop.to_flax(cell)


def test_nnx_keys_go_to_the_cell_whose_shapes_they_have():
    """nnx's dense_i / dense_h: a SimpleCell's (dense_h (H, H)), a GRUCell's (H, 3H) and an
    OptimizedLSTMCell's ((H, 4H), the bias on dense_h) each convert to their own cell."""
    made = {cls: random_leaves(nnx_params(cls(D, H, param_dtype=jnp.float64, rngs=nnx.Rngs(0))))
            for cls in (nnx.SimpleCell, nnx.GRUCell, nnx.OptimizedLSTMCell)}
    assert flax_rnn.tree_api(made[nnx.SimpleCell]) == "nnx" and flax_rnn.tree_api(
        made[nnx.GRUCell]) is None
    assert flax_gru.tree_api(made[nnx.GRUCell]) == "nnx"
    assert flax_gru.tree_api(made[nnx.SimpleCell]) is flax_gru.tree_api(
        made[nnx.OptimizedLSTMCell]) is None
    for cls, kind in ((nnx.SimpleCell, refnorm.RNN), (nnx.GRUCell, refnorm.GRU),
                      (nnx.OptimizedLSTMCell, refnorm.LSTM)):
        assert type(interop.from_flax(made[cls])) is kind, cls
        assert type(interop.from_flax(cls(D, H, rngs=nnx.Rngs(0)))) is kind, cls
        assert_same_tree(interop.to_flax(interop.from_flax(made[cls]), made[cls]), made[cls])


@pytest.mark.parametrize("api, lengths", [
    pytest.param(api, lengths, id=f"{api}-{'ragged' if lengths == RAGGED else 'full'}")
    for api in ("linen", "nnx") for lengths in (RAGGED, FULL)])
def test_every_gru_cell_passes_on_every_tensor(api, lengths):
    """linen: every tensor compared, db_hn included; nnx: every tensor but db_hn, which the
    header names as left out with the reason (the module has no b_hn)."""
    module = gru_module(api, random_gru(seed=20, b_hn=api == "linen"))
    before = interop.from_flax(module).params
    report = validate(module, lengths=lengths)
    assert report.ok and report.verdict() == "PASS", report
    assert report.target == f"flax.{api}.GRUCell" and report.dtype == "float64"
    if api == "linen":
        assert set(report.errors) == GRU_TENSORS and not report.skipped
    else:
        assert set(report.errors) == GRU_TENSORS - {"db_hn"}
        assert set(report.skipped) == {"db_hn"} and "no b_hn" in report.skipped["db_hn"]
        assert "not compared (flax.nnx.GRUCell has no b_hn" in str(report)
        assert report.to_dict()["skipped"] == report.skipped
    for name, value in interop.from_flax(module).params.items():   # the module is not changed
        np.testing.assert_array_equal(value, before[name])


def test_nnx_gru_s_db_hn_compared_anyway_fails(monkeypatch):
    """Were nnx's absent b_hn not left out, its row would compare refnorm's non-zero db_hn with
    nothing (the zeros from_flax fills in) and fail: the left-out row is not a silent pass."""
    monkeypatch.setattr(flax_gru, "absent_grads", lambda module: {})
    report = validate(gru_module("nnx", random_gru(b_hn=False)), lengths=RAGGED)
    assert failing(report) == {"db_hn"}, report


def test_a_wrong_gru_gate_order_round_trips_exactly_but_fails_validation(monkeypatch):
    """r and z swapped: the round trip cannot see it (both ways use FLAX_ORDER), the
    comparison with refnorm does."""
    monkeypatch.setattr(flax_gru, "FLAX_ORDER", "zrn")
    cell = random_gru()
    module = gru_module("linen", cell)
    assert_same_gru(cell, interop.from_flax(module))
    report = validate(module, lengths=RAGGED)
    assert {"hs", "hT", "dWx", "dWh", "db"} <= failing(report), report


def test_validate_command_passes_an_nnx_gru_cell(capsys):
    assert main(["validate", "test_flax:make_nnx_gru", "--float64"]) == 0
    out = capsys.readouterr().out
    assert "flax.nnx.GRUCell" in out and "not compared (flax.nnx.GRUCell has no b_hn" in out
    assert out.rstrip().endswith("PASS")
