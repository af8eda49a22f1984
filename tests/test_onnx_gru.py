"""The ONNX GRU node <-> refnorm.GRU (refnorm.interop.onnx_gru; interop.from_onnx, to_onnx,
to_onnx_model and from_onnx_model hand GRUs to it): linear_before_reset=1 is reset "after"
(presets.onnx_gru), linear_before_reset=0 reset "before" (presets.onnx_gru_reset_before).
Exact round trips, the two biases folded, nodes read (both directions of a bidirectional one),
the reference evaluator and onnxruntime against refnorm's forward, the validate targets of
`refnorm validate --all`, refusals, and planted bugs that must fail.

Tolerances, each with its reason:
* round trips and conversions are compared bit for bit (assert_array_equal): a converter only
  copies, transposes and reorders blocks; its one arithmetic step, adding the zero parts of the
  second bias that the export wrote, is exact.
* onnx's reference evaluator, float64: TOL["float64_reorder"] = 1e-12, the same equations in
  another order, so only rounding differs (measured ~1e-16).
* onnxruntime: TOL["float32"] = 1e-4. It runs the GRU in float32 only (its double model fails
  at run time, pinned below), so the comparison is float32 against refnorm's float32 forward:
  each side rounds at eps32 ≈ 1.2e-7 in a different order, amplified through T steps (measured
  ~1e-7).
* planted bugs are judged at 1e-4 and must fail even there: their errors are O(1).
Every weight, bias (Wb and Rb, every block of both) and initial state is random and non-zero;
ragged lengths include a length-1 sequence and sequences cut short by several steps.

A peer that is not installed is skipped with its install line, and fails in CI (CI=true).
"""
import inspect

import numpy as np
import pytest

import refnorm
from refnorm import interop, presets, validation_matrix as vm
from refnorm.golden import random_cell
from refnorm.gradcheck import randomize
from refnorm.interop import onnx_gru
from refnorm.validation import INSTALL, validate
from helpers import TOL
from test_interop import need, reverse_within

T, B, D, H = 6, 4, 3, 4
RAGGED, FULL = [6, 2, 5, 1], [6, 6, 6, 6]
LINEAR_BEFORE_RESET = {"after": 1, "before": 0}            # refnorm's reset -> the attribute
RESETS = tuple(LINEAR_BEFORE_RESET)


def gru_cell(reset, dtype="float64", seed=0):
    """A refnorm.GRU with every parameter random and non-zero (b_hn too, for reset "after")."""
    return randomize(refnorm.GRU(D, H, reset=reset, dtype=dtype, seed=seed), seed=seed + 1)


def onnx_arrays(dirs, seed, dtype=np.float64):
    """A peer's W [dirs, 3H, D], R [dirs, 3H, H], B [dirs, 6H], every entry random and non-zero
    (Rb's z and r blocks too: a folding mistake shows)."""
    rng = np.random.default_rng(seed)
    draw = lambda *shape: (0.5 * rng.standard_normal(shape)).astype(dtype)  # noqa: E731
    return {"W": draw(dirs, 3 * H, D), "R": draw(dirs, 3 * H, H), "B": draw(dirs, 6 * H)}


def peer_model(arrays, elem, direction="forward", with_sequence_lens=True, **attributes):
    """A peer's model: one GRU node holding `arrays` as initializers, written here with onnx's
    helper (not by interop), inputs X, sequence_lens, initial_h; outputs Y, Y_h."""
    onnx = need("onnx", INSTALL["onnx"])
    from onnx import helper, numpy_helper

    dirs = arrays["W"].shape[0]
    v = helper.make_tensor_value_info
    inputs = [v("X", elem, [T, B, D])]
    if with_sequence_lens:
        inputs.append(v("sequence_lens", onnx.TensorProto.INT32, [B]))
    inputs.append(v("initial_h", elem, [dirs, B, H]))
    node = helper.make_node("GRU", ["X", "W", "R", "B", "sequence_lens" if with_sequence_lens
                                    else "", "initial_h"], ["Y", "Y_h"], hidden_size=H,
                            direction=direction, **attributes)
    graph = helper.make_graph(
        [node], "peer", inputs,
        [v("Y", elem, [T, dirs, B, H]), v("Y_h", elem, [dirs, B, H])],
        initializer=[numpy_helper.from_array(a, k) for k, a in arrays.items()])
    model = helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", 22)])
    onnx.checker.check_model(model)
    return model


def assert_same_gru(a, b):
    """Bit for bit the same parameters, dtype and reset; b's arrays are its own."""
    assert type(a) is type(b) is refnorm.GRU and a.dtype == b.dtype
    assert (a.input_size, a.hidden_size, a.reset) == (b.input_size, b.hidden_size, b.reset)
    assert set(a.params) == set(b.params)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
        assert b.params[name].dtype == b.dtype and b.params[name].flags.c_contiguous
        assert not np.shares_memory(a.params[name], b.params[name])


def blocks(a, axis=-1):
    """a's three H-wide gate blocks along `axis`."""
    return np.split(a, 3, axis=axis)


# -- the layout, read from the installed reference op --------------------------------------------
def test_the_layout_is_the_installed_reference_op():
    """What the converter assumes, read from onnx's code: blocks z, r, h of W, R and of both
    halves of B; the two candidate forms; H' = (1 − z) h + z H."""
    need("onnx", INSTALL["onnx"])
    from onnx.reference.ops import op_gru
    text = inspect.getsource(op_gru.CommonGRU._run_forward)
    for line in ("[w_z, w_r, w_h] = np.split(W, 3)", "[r_z, r_r, r_h] = np.split(R, 3)",
                 "[w_bz, w_br, w_bh, r_bz, r_br, r_bh] = np.split(B, 6)",
                 "+ np.dot(r * H_t, np.transpose(r_h))",
                 "+ r * (np.dot(H_t, np.transpose(r_h)) + r_bh)",
                 "h = h_linear if self.linear_before_reset else h_default",
                 "H = (1 - z) * h + z * H_t"):
        assert line in text, line


# -- exact conversions ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reset", RESETS)
def test_round_trips_are_exact(reset, dtype):
    cell = gru_cell(reset, dtype)
    arrays = interop.to_onnx(cell)
    assert {k: a.shape for k, a in arrays.items()} == {"W": (1, 3 * H, D), "R": (1, 3 * H, H),
                                                       "B": (1, 6 * H)}
    assert all(a.dtype == cell.dtype and a.flags.c_contiguous for a in arrays.values())
    back = interop.from_onnx(**arrays, linear_before_reset=LINEAR_BEFORE_RESET[reset],
                             dtype=dtype)
    assert_same_gru(cell, back)
    for key, value in interop.to_onnx(back).items():
        np.testing.assert_array_equal(value, arrays[key])
    # ONNX's blocks are z, r, h: its first W block is refnorm's z (the second), its second r
    Wz, Wr, Wh = blocks(arrays["W"][0], axis=0)
    np.testing.assert_array_equal(Wz, cell.params["Wx"][:, H:2 * H].T)
    np.testing.assert_array_equal(Wr, cell.params["Wx"][:, :H].T)
    Rz, Rr, Rh = blocks(arrays["R"][0], axis=0)
    np.testing.assert_array_equal(Rr, cell.params["Wh"][:, :H].T)
    Wb, Rb = arrays["B"][0, :3 * H], arrays["B"][0, 3 * H:]
    np.testing.assert_array_equal(Wb, np.concatenate([blocks(cell.params["b"])[k]
                                                      for k in (1, 0, 2)]))
    np.testing.assert_array_equal(Rb[:2 * H], 0)                  # Rb = [0 | 0 | b_hn] or 0
    np.testing.assert_array_equal(Rb[2 * H:], cell.params["b_hn"] if reset == "after" else 0)


@pytest.mark.parametrize("reset", RESETS)
def test_direction_1_of_two_directions_folds_both_biases(reset):
    """Direction 1 of a peer's two-direction arrays, Wb and Rb random in every block: "after"
    folds Rb's z, r into b and keeps Rbh as b_hn; "before" adds the whole Rb. The arrays the
    export writes (Rb = [0 | 0 | b_hn] or 0) come back bit for bit. Nothing passed in changes,
    and the cell's arrays are its own."""
    lbr = LINEAR_BEFORE_RESET[reset]
    arrays = onnx_arrays(2, seed=7)
    saved = {k: a.copy() for k, a in arrays.items()}
    cell = interop.from_onnx(**arrays, direction=1, linear_before_reset=lbr)
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], saved[key])
    assert cell.reset == reset
    W, R, Bias = arrays["W"][1], arrays["R"][1], arrays["B"][1]
    Wbz, Wbr, Wbh, Rbz, Rbr, Rbh = np.split(Bias, 6)
    np.testing.assert_array_equal(cell.params["Wx"], np.concatenate(
        [blocks(W, axis=0)[k].T for k in (1, 0, 2)], axis=1))
    np.testing.assert_array_equal(cell.params["Wh"], np.concatenate(
        [blocks(R, axis=0)[k].T for k in (1, 0, 2)], axis=1))
    if reset == "after":
        np.testing.assert_array_equal(cell.params["b"],
                                      np.concatenate([Wbr + Rbr, Wbz + Rbz, Wbh]))
        np.testing.assert_array_equal(cell.params["b_hn"], Rbh)
        written = np.concatenate([Wbz, Wbr, Wbh, 0 * Rbz, 0 * Rbr, Rbh])
    else:
        assert "b_hn" not in cell.params
        np.testing.assert_array_equal(cell.params["b"],
                                      np.concatenate([Wbr + Rbr, Wbz + Rbz, Wbh + Rbh]))
        written = np.concatenate([Wbz, Wbr, Wbh, np.zeros(3 * H)])
    exported = dict(arrays, B=np.stack([arrays["B"][0], written]))
    back = interop.to_onnx(interop.from_onnx(**exported, direction=1, linear_before_reset=lbr))
    for key, want in (("W", W[None]), ("R", R[None]), ("B", written[None])):
        np.testing.assert_array_equal(back[key], want)
    # the exported arrays are copies: writing into them leaves the cell as it was
    kept = cell.params["Wx"].copy()
    mine = interop.to_onnx(cell)
    mine["W"] += 1.0
    np.testing.assert_array_equal(cell.params["Wx"], kept)
    arrays["W"] += 1.0
    np.testing.assert_array_equal(cell.params["Wx"], kept)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reset", RESETS)
def test_to_onnx_model_passes_the_checker_and_reads_back(reset, dtype):
    onnx = need("onnx", INSTALL["onnx"])
    cell = gru_cell(reset, dtype)
    model = interop.to_onnx_model(cell, T, B)
    onnx.checker.check_model(model, full_check=True)
    node, = model.graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "GRU" and attrs["linear_before_reset"] == LINEAR_BEFORE_RESET[reset]
    assert attrs["hidden_size"] == H and "activations" not in attrs     # the defaults
    elem = onnx.TensorProto.DOUBLE if dtype == "float64" else onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == elem
    assert [i.name for i in model.graph.input] == ["X", "sequence_lens", "initial_h"]
    assert [o.name for o in model.graph.output] == ["Y", "Y_h"]
    assert_same_gru(cell, interop.from_onnx_model(model, dtype=dtype))
    symbolic = interop.to_onnx_model(cell, None, None, with_sequence_lens=False)
    assert [i.name for i in symbolic.graph.input] == ["X", "initial_h"]
    assert symbolic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "T"


# -- the peers run it ---------------------------------------------------------------------------
@pytest.mark.parametrize("reset", RESETS)
def test_reference_evaluator_equals_the_forward(reset):
    """A peer's one-direction node (Wb, Rb random in every block) on onnx's reference evaluator
    in float64 against refnorm's forward of the cell from_onnx_model reads, full lengths (the
    evaluator ignores sequence_lens, see below)."""
    need("onnx", INSTALL["onnx"])
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator

    arrays = onnx_arrays(1, seed=11)
    model = peer_model(arrays, TensorProto.DOUBLE, with_sequence_lens=False,
                       linear_before_reset=LINEAR_BEFORE_RESET[reset])
    rng = np.random.default_rng(12)
    x, h0 = rng.standard_normal((T, B, D)), 0.5 * rng.standard_normal((1, B, H))
    Y, Y_h = ReferenceEvaluator(model).run(None, {"X": x, "initial_h": h0})
    cell = interop.from_onnx_model(model)
    assert cell.reset == reset
    hs, hT, _ = cell.forward(x, h0[0])
    for label, ours, theirs in (("Y", hs, Y[:, 0]), ("Y_h", hT, Y_h[0])):
        err = refnorm.relative_error(ours, theirs)
        print(f"reference evaluator {reset} {label}: {err:.1e}")
        assert err <= TOL["float64_reorder"], (label, err)


def test_the_reference_evaluator_ignores_sequence_lens():
    """What the ONNX rows of `refnorm validate --all` work around (onnx 1.23): given
    sequence_lens, the reference GRU still runs every step of every sequence."""
    need("onnx", INSTALL["onnx"])
    from onnx.reference import ReferenceEvaluator

    cell = gru_cell("after")
    rng = np.random.default_rng(13)
    x, h0 = rng.standard_normal((T, B, D)), rng.standard_normal((B, H))
    Y, Y_h = ReferenceEvaluator(interop.to_onnx_model(cell, T, B)).run(
        None, {"X": x, "sequence_lens": np.array(RAGGED, np.int32), "initial_h": h0[None]})
    hs, hT, _ = cell.forward(x, h0)                                     # every step
    assert refnorm.relative_error(hs, Y[:, 0]) <= TOL["float64_reorder"]
    assert refnorm.relative_error(hT, Y_h[0]) <= TOL["float64_reorder"]


@pytest.mark.parametrize("reset", RESETS)
def test_onnxruntime_float32_with_sequence_lens_both_directions(reset):
    """onnxruntime on a peer's bidirectional float32 node with sequence_lens: for each direction
    refnorm's float32 forward of the cell from_onnx_model reads reproduces Y (zeros past each
    length, bit for bit) and Y_h (each sequence's last valid state; the reverse direction's is
    its first step's), within TOL["float32"] (float32 on both sides, different order)."""
    need("onnx", INSTALL["onnx"])
    ort = need("onnxruntime", INSTALL["onnxruntime"])
    from onnx import TensorProto

    lbr = LINEAR_BEFORE_RESET[reset]
    arrays = onnx_arrays(2, seed=21, dtype=np.float32)
    model = peer_model(arrays, TensorProto.FLOAT, direction="bidirectional",
                       linear_before_reset=lbr)
    rng = np.random.default_rng(22)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((2, B, H))).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    Y, Y_h = session.run(None, {"X": x, "sequence_lens": np.array(RAGGED, np.int32),
                                "initial_h": h0})
    for b, n in enumerate(RAGGED):
        np.testing.assert_array_equal(Y[n:, :, b], 0)
    for d in (0, 1):
        cell = interop.from_onnx_model(model, direction=d, dtype="float32")
        assert_same_gru(interop.from_onnx(**arrays, direction=d, linear_before_reset=lbr,
                                          dtype="float32"), cell)
        xin = reverse_within(x, RAGGED) if d else x
        hs, hT, _ = cell.forward(xin, h0[d], lengths=np.array(RAGGED))
        hs = reverse_within(hs, RAGGED) if d else hs
        for label, ours, theirs in (("Y", hs, Y[:, d]), ("Y_h", hT, Y_h[d])):
            err = refnorm.relative_error(ours, theirs)
            print(f"onnxruntime {reset} direction {d} {label}: {err:.1e}")
            assert err <= TOL["float32"], (d, label, err)


def test_onnxruntime_has_no_double_gru():
    """Why the onnxruntime rows are float32 (onnxruntime 1.32): a double GRU model loads but
    fails when it runs. An onnxruntime that adds the kernel fails this test: then the rows and
    the notes must change."""
    need("onnx", INSTALL["onnx"])
    ort = need("onnxruntime", INSTALL["onnxruntime"])
    session = ort.InferenceSession(interop.to_onnx_model(gru_cell("after"), T, B)
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="GRU operator does not support double"):
        session.run(None, {"X": np.zeros((T, B, D)), "sequence_lens": np.array(FULL, np.int32),
                           "initial_h": np.zeros((1, B, H))})


# -- the validate targets of `refnorm validate --all` ---------------------------------------------
@pytest.mark.parametrize("preset", ["onnx_gru", "onnx_gru_reset_before"])
@pytest.mark.parametrize("lengths", [RAGGED, FULL], ids=["ragged", "full"])
def test_the_validate_targets_pass(preset, lengths):
    need("onnx", INSTALL["onnx"])
    cell = random_cell(presets.PRESETS[preset], D, H, seed=3)
    report = validate(getattr(vm, preset + "_reference"), cell=cell, lengths=lengths,
                      outputs_only=True)
    assert report.ok and report.float64 and report.worst <= TOL["float64_reorder"], report
    assert set(report.errors) == {"hs", "hT"}
    need("onnxruntime", INSTALL["onnxruntime"])
    report = validate(getattr(vm, preset + "_runtime"), cell=cell, lengths=lengths,
                      outputs_only=True)
    assert report.ok and report.dtype == "float32" and report.worst <= TOL["float32"], report


def test_the_validate_targets_refuse_the_other_form():
    cell = random_cell(presets.onnx_gru_reset_before, D, H, seed=3)
    with pytest.raises(ValueError, match="onnx_gru_reference runs refnorm.GRU reset='after': "
                                         "give it --preset onnx_gru"):
        validate(vm.onnx_gru_reference, cell=cell, outputs_only=True)
    cell = random_cell(presets.onnx_gru, D, H, seed=3)
    with pytest.raises(ValueError, match="--preset onnx_gru_reset_before"):
        validate(vm.onnx_gru_reset_before_runtime, cell=cell, outputs_only=True)


def test_the_presets_are_the_two_reset_forms():
    for name, reset in (("onnx_gru", "after"), ("onnx_gru_reset_before", "before")):
        make = presets.PRESETS[name]
        assert make.cls is refnorm.GRU and make.options == {"reset": reset}
        assert set(make(D, H).params) == ({"Wx", "Wh", "b", "b_hn"} if reset == "after"
                                          else {"Wx", "Wh", "b"})


# -- nodes read from a graph ---------------------------------------------------------------------
def test_from_onnx_model_reads_the_node():
    """The node's linear_before_reset (absent: 0, the schema's default), each direction of a
    bidirectional node, layout=1 (a data layout, not the weights'), and GRU nodes counted with
    the LSTM and RNN nodes in graph order."""
    need("onnx", INSTALL["onnx"])
    from onnx import TensorProto, helper, numpy_helper

    arrays = onnx_arrays(2, seed=31)
    for attributes, reset in (({}, "before"), ({"linear_before_reset": 1}, "after"),
                              ({"linear_before_reset": 0, "layout": 0}, "before")):
        model = peer_model(arrays, TensorProto.DOUBLE, direction="bidirectional", **attributes)
        for d in (0, 1):
            got = interop.from_onnx_model(model, direction=d)
            assert_same_gru(interop.from_onnx(**arrays, direction=d,
                                              linear_before_reset=int(reset == "after")), got)
    one = {k: a[:1] for k, a in arrays.items()}
    laid = peer_model(one, TensorProto.DOUBLE, linear_before_reset=1)
    laid.graph.node[0].attribute.append(helper.make_attribute("layout", 1))
    assert_same_gru(interop.from_onnx(**one, linear_before_reset=1),
                    interop.from_onnx_model(laid))
    # an LSTM node, then the GRU node: node=1 is the GRU
    lstm = interop.to_onnx(randomize(refnorm.LSTM(D, H, seed=0), seed=1))
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["X", "Wl", "Rl", "Bl"], ["Yl"], hidden_size=H),
         helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], hidden_size=H,
                          linear_before_reset=1)],
        "mixed", [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [T, B, D])], [],
        initializer=[numpy_helper.from_array(a, k + "l") for k, a in lstm.items()] +
                    [numpy_helper.from_array(a, k) for k, a in one.items()])
    assert type(interop.from_onnx_model(graph, node=0)) is refnorm.LSTM
    assert_same_gru(interop.from_onnx(**one, linear_before_reset=1),
                    interop.from_onnx_model(graph, node=1))
    with pytest.raises(ValueError, match="the graph has 2 LSTM or RNN or GRU node"):
        interop.from_onnx_model(graph, node=2)


# -- refused inputs ------------------------------------------------------------------------------
def test_array_refusals_name_what_is_refused():
    W, R, Bias = (onnx_arrays(1, seed=41)[k] for k in ("W", "R", "B"))
    for kwargs, match in (
            ({}, "do not carry linear_before_reset: pass linear_before_reset=0"),
            ({"linear_before_reset": "1"}, "linear_before_reset must be an integer"),
            ({"linear_before_reset": 1, "nonlinearity": "tanh"},
             "nonlinearity is an ONNX RNN's .*; these are a GRU's arrays"),
            ({"linear_before_reset": 1, "P": np.zeros((1, 3 * H))},
             "an ONNX GRU has no peepholes"),
            ({"linear_before_reset": 1, "direction": 1},
             "direction=1 is out of range: W holds 1 direction"),
            ({"linear_before_reset": 1, "direction": -1}, "direction must be a non-negative")):
        with pytest.raises(ValueError, match=match):
            interop.from_onnx(W, R, Bias, **kwargs)
    with pytest.raises(ValueError, match=r"B \[dirs, 6H\] must have shape \(1, 24\)"):
        interop.from_onnx(W, R, Bias[:, :3 * H], linear_before_reset=0)
    with pytest.raises(ValueError, match=r"R \[dirs, 3H, H\] must have shape \(2, 12, 4\)"):
        interop.from_onnx(np.concatenate([W, W]), R, linear_before_reset=0)
    with pytest.raises(ValueError, match="the gate axis must have length 3H"):
        interop.from_onnx(np.ones((1, 3 * H + 1, D)), R, linear_before_reset=0)
    bad = W.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        interop.from_onnx(bad, R, linear_before_reset=1)
    lstm = interop.to_onnx(refnorm.LSTM(D, H, seed=0))
    with pytest.raises(ValueError, match="linear_before_reset is an ONNX GRU's .*; these are "
                                         "an LSTM's arrays"):
        interop.from_onnx(**lstm, linear_before_reset=1)
    rnn = interop.to_onnx(refnorm.RNN(D, H, seed=0))
    with pytest.raises(ValueError, match="these are an RNN's arrays"):
        interop.from_onnx(**rnn, linear_before_reset=0)
    for cls in (refnorm.LNGRU, refnorm.BNGRU, refnorm.SeqBNGRU):
        with pytest.raises(ValueError, match=f"to_onnx converts a refnorm.GRU, got {cls.__name__}"):
            interop.to_onnx(cls(D, H, seed=0))
        with pytest.raises(ValueError, match="converts a refnorm.GRU"):
            interop.to_onnx_model(cls(D, H, seed=0), T, B)


def test_node_refusals_name_what_is_refused():
    need("onnx", INSTALL["onnx"])
    from onnx import TensorProto

    arrays = onnx_arrays(2, seed=51)
    one = {k: a[:1] for k, a in arrays.items()}
    for attributes, match in (
            ({"activations": ["Sigmoid", "Relu"]},
             r"activations \('Sigmoid', 'Relu'\) \(direction 0\) are not supported"),
            ({"activations": ["HardSigmoid", "Tanh"]}, "'HardSigmoid'"),
            ({"clip": 3.0}, "clip=3.0 is not supported")):
        with pytest.raises(ValueError, match=match):
            interop.from_onnx_model(peer_model(one, TensorProto.DOUBLE, **attributes))
    # each direction's own pair: direction 0 is Sigmoid, Tanh and converts; direction 1 is not
    both = peer_model(arrays, TensorProto.DOUBLE, direction="bidirectional",
                      activations=["Sigmoid", "Tanh", "Sigmoid", "Relu"])
    assert interop.from_onnx_model(both, direction=0).reset == "before"
    with pytest.raises(ValueError, match=r"\(direction 1\) are not supported"):
        interop.from_onnx_model(both, direction=1)
    fed = peer_model(one, TensorProto.DOUBLE)
    fed.graph.initializer.pop(0)                                        # W fed at run time
    with pytest.raises(ValueError, match="the GRU's W .'W'. is not an initializer"):
        interop.from_onnx_model(fed)


# -- planted bugs --------------------------------------------------------------------------------
@pytest.mark.parametrize("bug", ["r and z swapped", "linear_before_reset swapped"])
def test_planted_bugs_fail(monkeypatch, bug):
    """The converter reading ONNX's blocks in refnorm's order (z and r swapped), or writing the
    other linear_before_reset: round trips stay exact (the bug is symmetric), the reference
    evaluator does not, for both forms."""
    need("onnx", INSTALL["onnx"])
    if bug == "r and z swapped":
        monkeypatch.setattr(onnx_gru, "ONNX_GRU_ORDER", "rzn")
    else:
        monkeypatch.setattr(onnx_gru, "ONNX_LINEAR_BEFORE_RESET", {"after": 0, "before": 1})
    for preset in ("onnx_gru", "onnx_gru_reset_before"):
        cell = random_cell(presets.PRESETS[preset], D, H, seed=3)
        report = validate(getattr(vm, preset + "_reference"), cell=cell, lengths=RAGGED,
                          outputs_only=True, tol=1e-4)
        print(f"{bug}, {preset}: {report.worst:.1e}")
        assert not report.ok and "FAIL" in report.verdict(), (bug, preset)
