"""Keras 3 recurrent stacks <-> refnorm.Stack (derivations/stack.md): a keras.layers.Bidirectional,
and recurrent layers in sequence with a BatchNormalization between each two.

    net = from_keras_stack(keras.layers.Bidirectional(keras.layers.LSTM(H, ...)))
    net = from_keras_stack([lstm0, keras.layers.BatchNormalization(), lstm1])   # or a Sequential
    to_keras_stack(net, obj)                                     # refnorm -> the built layers

Each recurrent layer (LSTM, GRU, SimpleRNN; each direction of a Bidirectional) goes through the
single-layer converter, interop.from_keras / to_keras; this module only places the cells and
the norm. What Keras 3.15.1 computes (keras/src/layers/rnn/bidirectional.py, rnn.py,
backend/*/rnn.py, layers/normalization/batch_normalization.py; measured against refnorm.Stack
on TensorFlow, torch and JAX, tests/test_keras_stack.py):

* Bidirectional: forward_layer, and backward_layer, a copy with go_backwards=True. The backend's
  RNN loop reverses the whole padded sequence and its mask, so the padded tail comes first, where
  the masked carry keeps the initial state: the backward layer reads each sequence backwards
  within its length and ends at its first step, (STACK 1)-(STACK 3), and a refnorm "bwd" cell is
  the backward layer. With return_sequences the wrapper forces zero_output_for_mask=True (outputs
  0 at padded steps, as refnorm's), flips the backward outputs back to the input's time order and
  (merge_mode="concat") puts the forward ones first (STACK 4); return_state gives [h_fwd(,
  c_fwd), h_bwd(, c_bwd)]. Other merge modes mix the two directions: refused.
* BatchNormalization on a sequence output (axis -1), given the mask the recurrent layer passes
  on: statistics over the valid (t, b) frames, the biased variance, epsilon inside the square
  root (1e-3 by default): between="seq_bn" (STACK 6) with norm_eps = epsilon. Its moving
  statistics follow moving <- momentum * moving + (1 - momentum) * batch: norm_momentum =
  1 - momentum (0.01 for Keras's 0.99); training=True normalises with the batch statistics,
  inference with the moving ones (net.stats "l{l}.norm.mean" / ".var"). At padded positions
  Keras normalises what the layer below output there (a plain layer's previous output:
  zero_output_for_mask=False) where refnorm outputs 0; the next recurrent layer's masked carry neither reads those
  values nor passes a gradient back to them, so no output or gradient depends on them.

Where Keras differs, refnorm keeps its own equations and refnorm.validate says so in a note
(validation.KERAS_MASKED_MOMENTS, KERAS_FLOAT32_BATCH_NORM):
* with a mask, Keras's moments divide by n + keras.config.epsilon() (the fuzz factor, 1e-7 by
  default) instead of the n valid frames, a relative 1e-7/n on the statistics (~1e-8 on the
  outputs at T = 6, B = 4); keras.config.set_epsilon(0.0) removes it (then ~1e-16 on
  TensorFlow). Without a mask Keras's moments are exact;
* BatchNormalization computes in backend.result_type(dtype, "float32"): float32 for a float64
  input on torch and JAX (BIT64_TO_BIT32_DTYPE), float64 on TensorFlow;
* Keras's BatchNormalization refreshes its moving statistics from any training batch, refnorm's
  between-layer norm only from batches with at least two valid frames (a variance of one frame
  is 0).

Refused (ValueError): merge modes other than "concat"; a layer between the recurrent layers
other than one BatchNormalization (a stack has batch norms between all its layers or none); a
BatchNormalization with axis other than the features, center=False or scale=False (refnorm's
norm has a trainable gain and shift), renorm=True, trainable=False (Keras then normalises with
the moving statistics in training too), or epsilon / momentum that differ between the norms;
recurrent layers that differ in kind, form (activation, reset_after) or units; dropout or
recurrent_dropout (refnorm's cells have none); go_backwards outside a Bidirectional; a layer
below the last without return_sequences=True. A leading Masking layer is accepted: the mask it
computes is the mask or lengths given to Stack.forward.
"""
import contextlib
import copy

import numpy as np

RECURRENT = ("LSTM", "GRU", "SimpleRNN")
OTHERS = ("Bidirectional", "BatchNormalization", "Sequential", "Masking")


def keras_class(obj):
    """The Keras class name this object is (or subclasses) among RECURRENT and OTHERS, else
    None."""
    for cls in type(obj).__mro__:
        if (cls.__module__ or "").startswith("keras") and cls.__name__ in RECURRENT + OTHERS:
            return cls.__name__
    return None


def is_keras_stack(obj):
    """What from_keras_stack takes: a Bidirectional, a Sequential, or a list of Keras layers."""
    if isinstance(obj, (list, tuple)):
        return len(obj) > 0 and all(keras_class(layer) is not None for layer in obj)
    return keras_class(obj) in ("Bidirectional", "Sequential")


def _config(layer):
    return layer.get_config() if hasattr(layer, "get_config") else {}


def directions(unit):
    """[("fwd", layer)] for a recurrent layer, [("fwd", forward), ("bwd", backward)] for a
    Bidirectional: the refnorm cell of each."""
    if keras_class(unit) == "Bidirectional":
        return [("fwd", unit.forward_layer), ("bwd", unit.backward_layer)]
    return [("fwd", unit)]


def _check_recurrent(layer, where):
    name = keras_class(layer)
    if name not in RECURRENT:
        raise ValueError(f"{where} is a {type(layer).__name__}; a refnorm.Stack layer is a Keras "
                         f"{', '.join(RECURRENT)} or a Bidirectional of one")
    config = _config(layer)
    for key in ("dropout", "recurrent_dropout"):
        if config.get(key, 0):
            raise ValueError(f"{where} has {key}={config[key]}; refnorm's cells have no dropout "
                             f"inside (build the layer with {key}=0)")


def stack_layers(obj):
    """(units, norms) of a Keras stack: units the recurrent layers or Bidirectionals in order,
    norms the BatchNormalization between each two (or [] when there is none). ValueError for
    anything refnorm.Stack cannot express (the module docstring lists it)."""
    if keras_class(obj) == "Bidirectional":
        layers = [obj]
    elif keras_class(obj) == "Sequential":
        layers = list(obj.layers)
    elif isinstance(obj, (list, tuple)):
        layers = list(obj)
    else:
        raise ValueError(f"expected a keras.layers.Bidirectional, a keras.Sequential or a list "
                         f"of Keras layers, got {type(obj).__name__}")
    if layers and keras_class(layers[0]) == "Masking":
        layers = layers[1:]                    # its mask is Stack.forward's mask or lengths
    units, gaps = [], []
    for k, layer in enumerate(layers):
        name = keras_class(layer)
        where = f"layer {k} ({type(layer).__name__})"
        if name == "BatchNormalization":
            if not units or len(gaps) == len(units):
                raise ValueError(f"{where}: a BatchNormalization must sit between two "
                                 "recurrent layers (one, after a layer's sequence output)")
            gaps.append(layer)
            continue
        if name not in RECURRENT + ("Bidirectional",):
            raise ValueError(f"{where}: refnorm.Stack has recurrent layers and a batch norm "
                             "between them, nothing else (Masking only first)")
        if len(gaps) < len(units):
            gaps.append(None)
        units.append(layer)
    if not units:
        raise ValueError("the Keras stack has no recurrent layer")
    if len(gaps) == len(units):
        raise ValueError("a BatchNormalization after the last recurrent layer is not part of a "
                         "refnorm.Stack (its norms sit between layers)")
    if any(g is None for g in gaps) and any(g is not None for g in gaps):
        raise ValueError("a refnorm.Stack has a batch norm between every two layers or none: "
                         "this stack has one between some layers only")
    bidirectional = {keras_class(u) == "Bidirectional" for u in units}
    if len(bidirectional) > 1:
        raise ValueError("a refnorm.Stack is bidirectional in every layer or in none: the Keras "
                         "stack mixes Bidirectional and one-direction layers")
    for k, unit in enumerate(units):
        where = f"recurrent layer {k} ({type(unit).__name__})"
        if keras_class(unit) == "Bidirectional":
            if unit.merge_mode != "concat":
                raise ValueError(f"{where} has merge_mode={unit.merge_mode!r}; refnorm.Stack "
                                 "concatenates the two directions, forward first (\"concat\")")
            if unit.forward_layer.go_backwards or not unit.backward_layer.go_backwards:
                raise ValueError(f"{where}: its forward_layer must read forwards and its "
                                 "backward_layer backwards (go_backwards=True)")
        elif _config(unit).get("go_backwards"):
            raise ValueError(f"{where} has go_backwards=True outside a Bidirectional: a "
                             "refnorm.Stack's one direction reads forwards")
        for d, layer in directions(unit):
            _check_recurrent(layer, f"{where}, {d}" if len(directions(unit)) > 1 else where)
        if k < len(units) - 1 and not _config(directions(unit)[0][1]).get("return_sequences"):
            raise ValueError(f"{where} feeds the next layer, so it needs return_sequences=True")
    norms = [g for g in gaps if g is not None]
    for k, bn in enumerate(norms):
        _check_batch_norm(bn, f"BatchNormalization {k}")
    for key in ("epsilon", "momentum"):
        values = {float(getattr(bn, key)) for bn in norms}
        if len(values) > 1:
            raise ValueError(f"the BatchNormalizations have different {key} {sorted(values)}: a "
                             "refnorm.Stack has one norm_eps and one norm_momentum")
    return units, norms


def _check_batch_norm(bn, where):
    config = _config(bn)
    if config.get("axis", -1) not in (-1, 2):
        raise ValueError(f"{where} has axis={config['axis']}; refnorm's between-layer batch norm "
                         "normalises each feature (axis=-1) over the valid (t, b) frames")
    for key in ("center", "scale"):
        if not config.get(key, True):
            raise ValueError(f"{where} has {key}=False; refnorm's between-layer norm has a "
                             "trainable gain and shift (center=True, scale=True)")
    if config.get("renorm"):
        raise ValueError(f"{where} has renorm=True (batch renormalization), which refnorm does "
                         "not compute")
    if not bn.trainable:
        raise ValueError(f"{where} has trainable=False: Keras then normalises with its moving "
                         "statistics in training too, which a refnorm.Stack in training does not")


def _cell_options(cell):
    """The options that decide a converted cell's function (the Stack gives them every cell)."""
    from ..cells import GRU, RNN
    if isinstance(cell, GRU):
        return {"reset": cell.reset}
    if isinstance(cell, RNN):
        return {"nonlinearity": cell.nonlinearity}
    return {}


def from_keras_stack(obj, dtype="float64", backend="numpy"):
    """refnorm.Stack holding a copy of a Keras stack's weights: a Bidirectional(LSTM | GRU |
    SimpleRNN, merge_mode="concat"), or a keras.Sequential or list of recurrent layers (or
    Bidirectionals) with one BatchNormalization between each two, or none. Each recurrent layer
    through interop.from_keras ("l{l}.fwd.*", the backward layer "l{l}.bwd.*"); between="seq_bn"
    with norm_eps = epsilon, norm_momentum = 1 - momentum, "l{l}.norm.gamma" / "beta" and the
    moving statistics in net.stats. ValueError for what a Stack cannot express."""
    from ..stack import Stack
    from .keras_lstm import from_keras

    units, norms = stack_layers(obj)
    cells = [[(d, from_keras(layer, dtype, backend)) for d, layer in directions(unit)]
             for unit in units]
    first = cells[0][0][1]
    H, dirs = first.hidden_size, len(cells[0])
    for l, row in enumerate(cells):
        for d, cell in row:
            if (type(cell), _cell_options(cell), cell.hidden_size) != \
                    (type(first), _cell_options(first), H):
                raise ValueError(f"recurrent layer {l} ({d}) is a {type(cell).__name__} "
                                 f"{_cell_options(cell)} of {cell.hidden_size} units, layer 0 a "
                                 f"{type(first).__name__} {_cell_options(first)} of {H}: a "
                                 "refnorm.Stack has one kind of cell and one hidden size")
            if l > 0 and cell.input_size != dirs * H:
                raise ValueError(f"recurrent layer {l} ({d}) reads {cell.input_size} features, "
                                 f"but the layer below outputs {dirs * H}")
    options = {}
    if norms:
        options = {"between": "seq_bn", "norm_eps": float(norms[0].epsilon),
                   "norm_momentum": 1.0 - float(norms[0].momentum)}
    net = Stack(type(first), first.input_size, H, num_layers=len(units),
                bidirectional=dirs == 2, dtype=dtype, backend=backend, **options,
                **_cell_options(first))
    for l, row in enumerate(cells):
        for d, cell in row:
            net.params.update({f"l{l}.{d}.{name}": value for name, value in cell.params.items()})
    for l, bn in enumerate(norms):
        weights = bn.get_weights()
        if not weights:
            raise ValueError(f"BatchNormalization {l} has no weights yet: build it first")
        gamma, beta, mean, var = (np.array(w, dtype=net.dtype) for w in weights)
        if gamma.shape != (dirs * H,):
            raise ValueError(f"BatchNormalization {l} normalises {gamma.shape[0]} features, "
                             f"the layer below outputs {dirs * H}")
        net.params[f"l{l}.norm.gamma"], net.params[f"l{l}.norm.beta"] = gamma, beta
        net.stats[f"l{l}.norm.mean"][...] = mean
        net.stats[f"l{l}.norm.var"][...] = var
    return net


def stack_cell(net, layer, direction):
    """A copy of net's cell of that layer and direction holding the params net.params gives it
    (what Stack.forward hands the cell)."""
    k = net.directions.index(direction)
    cell = copy.copy(net.cells[layer][k])
    cell.params = {name: net.params[f"l{layer}.{direction}.{name}"] for name in cell.params}
    return cell


def to_keras_stack(net, obj):
    """Write a refnorm.Stack's weights into a built Keras stack of its shape (what
    from_keras_stack reads: each recurrent layer by interop.to_keras, each BatchNormalization's
    gamma, beta and moving statistics); returns obj. ValueError where the shapes, the number of
    layers or directions, the kind of norm, its eps or momentum do not match."""
    from .keras_lstm import to_keras

    units, norms = stack_layers(obj)
    dirs = len(directions(units[0]))
    if (len(units), dirs) != (net.num_layers, len(net.directions)):
        raise ValueError(f"the Keras stack has {len(units)} layers x {dirs} directions, the "
                         f"Stack {net.num_layers} x {len(net.directions)}")
    if net.between not in (None, "seq_bn"):
        raise ValueError(f"the Stack's between={net.between!r} has no Keras layer here: Keras's "
                         "BatchNormalization on a masked sequence is between='seq_bn'")
    if bool(norms) != (net.between == "seq_bn"):
        raise ValueError(f"the Stack has between={net.between!r}, the Keras stack "
                         f"{len(norms)} BatchNormalization layers")
    if net.dropout:
        raise ValueError(f"the Stack has dropout={net.dropout} between its layers; the Keras "
                         "stack has no Dropout layer there")
    for bn in norms:
        if (float(bn.epsilon), 1.0 - float(bn.momentum)) != (net.norm_eps, net.norm_momentum):
            raise ValueError(f"the BatchNormalization has epsilon={bn.epsilon}, momentum="
                             f"{bn.momentum}; the Stack norm_eps={net.norm_eps}, norm_momentum="
                             f"{net.norm_momentum} (= 1 - momentum)")
    for l, unit in enumerate(units):
        for d, layer in directions(unit):
            to_keras(stack_cell(net, l, d), layer)
    for l, bn in enumerate(norms):
        current = bn.get_weights()
        new = [net.params[f"l{l}.norm.gamma"], net.params[f"l{l}.norm.beta"],
               net.stats[f"l{l}.norm.mean"], net.stats[f"l{l}.norm.var"]]
        if [np.shape(w) for w in current] != [w.shape for w in new]:
            raise ValueError(f"BatchNormalization {l} has weights of shapes "
                             f"{[np.shape(w) for w in current]}, the Stack's norm "
                             f"{[w.shape for w in new]}")
        bn.set_weights(new)
    return obj


# -- calling a Keras stack layer by layer (refnorm.validate's Keras stack adapter) --------------
def call_keras_stack(units, norms, x, states, mask, training, call=None):
    """Keras's forward of a stack, one layer at a time: x (B, T, D) and states [h0] or [h0, c0],
    each (L·dirs, B, H) row l·dirs + d as refnorm's, as tensors of Keras's backend; mask (B, T)
    of bool or None. call(layer, inputs, **kwargs) runs one layer (default: layer(...); JAX's
    stateless calls go through it). Every layer must return its states (returning_states).
    Returns the last layer's sequence (B, T, dirs·H) and finals, per state a list of the
    L·dirs final rows in refnorm's order."""
    call = call or (lambda layer, inputs, **kwargs: layer(inputs, **kwargs))   # noqa: E731
    dirs = len(directions(units[0]))
    finals = [[None] * (len(units) * dirs) for _ in states]
    u = x
    for l, unit in enumerate(units):
        initial = [s[l * dirs + k] for k in range(dirs) for s in states]  # Keras's order
        seq, *out = call(unit, u, initial_state=initial, mask=mask, training=training)
        for k in range(dirs):
            for s in range(len(states)):
                finals[s][l * dirs + k] = out[k * len(states) + s]
        u = seq
        if l < len(norms):
            u = call(norms[l], u, mask=mask, training=training)
    return u, finals


@contextlib.contextmanager
def returning_states(units):
    """Within `with returning_states(units):` every recurrent layer (and Bidirectional) of the
    units returns its final states (return_state=True), as refnorm.Stack does; restored on
    exit. The flag only chooses what a layer returns, not what it computes."""
    layers = {id(layer): layer for unit in units
              for layer in [unit] + [lay for _, lay in directions(unit)]}.values()
    saved = [(layer, layer.return_state) for layer in layers]
    try:
        for layer, _ in saved:
            layer.return_state = True
        yield
    finally:
        for layer, value in saved:
            layer.return_state = value


# -- validation targets: `refnorm validate refnorm.interop.keras_stack:<name>` -----------------
def _random_into(obj, net, seed):
    """obj with the weights of `net` redrawn at random and non-zero (each cell by
    refnorm.gradcheck.randomize; norm gains ~ U(0.5, 1.5), shifts and moving means
    ~ N(0, 0.5²), moving variances ~ U(0.5, 1.5)), written by to_keras_stack."""
    from ..gradcheck import randomize
    for l in range(net.num_layers):
        for k, d in enumerate(net.directions):       # in place: into net.params's arrays
            randomize(stack_cell(net, l, d), seed=seed + 1 + l * len(net.directions) + k)
    rng = np.random.default_rng(seed)
    for l in range(net.num_layers - 1 if net.between else 0):
        net.params[f"l{l}.norm.gamma"][...] = rng.uniform(0.5, 1.5, net.output_size)
        net.params[f"l{l}.norm.beta"][...] = 0.5 * rng.standard_normal(net.output_size)
        net.stats[f"l{l}.norm.mean"][...] = 0.5 * rng.standard_normal(net.output_size)
        net.stats[f"l{l}.norm.var"][...] = rng.uniform(0.5, 1.5, net.output_size)
    return to_keras_stack(net, obj)


def _keras(target):
    from ..validation import import_peer
    return import_peer("keras", f"refnorm.interop.keras_stack:{target}")


def _built(obj, input_size, net, seed):
    """obj built for input_size features, holding net's shape with random non-zero weights."""
    obj.build((None, None, input_size))
    return _random_into(obj, net, seed)


def bidirectional_lstm(input_size, hidden_size, seed=0):
    """keras.layers.Bidirectional(LSTM(hidden_size, return_sequences=True, return_state=True))
    in float64, built for input_size features, with random non-zero weights."""
    from ..stack import Stack
    keras = _keras("bidirectional_lstm")
    layer = keras.layers.Bidirectional(
        keras.layers.LSTM(hidden_size, return_sequences=True, return_state=True,
                          dtype="float64"), dtype="float64")
    return _built(layer, input_size,
                  Stack("lstm", input_size, hidden_size, bidirectional=True), seed)


def batch_norm_lstm_stack(input_size, hidden_size, seed=0):
    """keras.Sequential([LSTM(return_sequences=True), BatchNormalization(),
    LSTM(return_sequences=True)]) in float64, built for input_size features, with random non-zero
    weights, gain, shift and moving statistics; Keras's epsilon 1e-3 and momentum 0.99."""
    from ..stack import Stack
    keras = _keras("batch_norm_lstm_stack")
    lstm = lambda: keras.layers.LSTM(hidden_size, return_sequences=True,    # noqa: E731
                                     dtype="float64")
    model = keras.Sequential([lstm(), keras.layers.BatchNormalization(dtype="float64"), lstm()])
    return _built(model, input_size,
                  Stack("lstm", input_size, hidden_size, num_layers=2, between="seq_bn",
                        norm_eps=1e-3, norm_momentum=1 - 0.99), seed)


def bidirectional_gru_batch_norm_stack(input_size, hidden_size, seed=0):
    """keras.Sequential([Bidirectional(GRU(return_sequences=True)), BatchNormalization(),
    Bidirectional(GRU(return_sequences=True))]) in float64 (reset_after=True: refnorm.GRU
    reset "after"), built for input_size features, with random non-zero weights, gain, shift
    and moving statistics."""
    from ..stack import Stack
    keras = _keras("bidirectional_gru_batch_norm_stack")
    gru = lambda: keras.layers.Bidirectional(keras.layers.GRU(                 # noqa: E731
        hidden_size, return_sequences=True, dtype="float64"), dtype="float64")
    model = keras.Sequential([gru(), keras.layers.BatchNormalization(dtype="float64"), gru()])
    return _built(model, input_size,
                  Stack("gru", input_size, hidden_size, num_layers=2, bidirectional=True,
                        between="seq_bn", norm_eps=1e-3, norm_momentum=1 - 0.99), seed)
