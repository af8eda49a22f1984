"""Flax (JAX) LSTM cells: the converters refnorm.interop.from_flax / to_flax and
refnorm.validate on flax.linen.LSTMCell, flax.linen.OptimizedLSTMCell, flax.nnx.LSTMCell and
flax.nnx.OptimizedLSTMCell, with Flax's own RNN (seq_lengths) and jax.vjp giving the gradients.

Tolerances, each with its reason:
* round trips are compared bit for bit (assert_array_equal): the converters only split,
  concatenate and copy gate blocks (Flax's gate order is refnorm's), no arithmetic.
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
from refnorm.interop import flax_lstm  # noqa: E402
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


def test_refused_inputs_name_what_is_refused():
    cell = random_lstm()
    for bad in (dict(gate_fn=jax.nn.relu), dict(activation_fn=jax.nn.gelu)):
        attr = next(iter(bad))
        for module in (nn.LSTMCell(H, **bad).bind({"params": interop.to_flax(cell)}),
                       nnx.LSTMCell(D, H, rngs=nnx.Rngs(0), **bad)):
            for call in (interop.from_flax, validate, lambda m: interop.to_flax(cell, m)):
                with pytest.raises(ValueError, match=f"{attr}=.*refuses"):
                    call(module)
    with pytest.raises(ValueError, match="GRUCell"):
        interop.from_flax(nnx.GRUCell(D, H, rngs=nnx.Rngs(0)))
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
