"""Converters between refnorm's cells and the LSTM, vanilla-RNN and GRU parameters of other
frameworks.

    import refnorm.interop as interop
    cell = interop.from_torch(net, layer=1, reverse=True)     # one layer and direction of nn.LSTM
    stack = interop.from_torch(net)                            # all of a stacked net: refnorm.Stack
    net = interop.to_torch(cell)                               # a new one-layer nn.LSTM (float64)

refnorm's layout: z = x Wx + h Wh + b, Wx (D, 4H), Wh (H, 4H), one bias b (4H), gate blocks
i, f, g, o. Every converter copies (the result never shares memory with its source), and a
round trip refnorm -> framework -> refnorm is exact, bit for bit, in float64. The frameworks are
imported inside the functions that need them: `import refnorm.interop` needs only NumPy, and the
array converters (from_/to_onnx, from_/to_keras on lists, from_/to_tf1*) run without any of them.

| framework | input weights | recurrent weights | bias | gates | idx |
|---|---|---|---|---|---|
| PyTorch nn.LSTM, LSTMCell | weight_ih_l{k}[_reverse] (4H, D) | weight_hh_l{k}... (4H, H) | bias_ih + bias_hh | i,f,g,o | 0,1,2,3 |
| Keras 3 LSTM, LSTMCell | kernel (D, 4H) | recurrent_kernel (H, 4H) | bias (4H) | i,f,c,o | 0,1,2,3 |
| cuDNN (for reference) | linLayerID 0-3 | linLayerID 4-7 | bW + bR | i,f,c,o | 0,1,2,3 |
| ONNX LSTM | W [dirs, 4H, D] | R [dirs, 4H, H] | B [dirs, 8H]: Wb + Rb | i,o,f,c | 0,2,3,1 |
| haste LSTM, LayerNormLSTM | kernel (D, 4H) | recurrent_kernel (H, 4H) | bias (4H) | i,g,f,o | 0,2,1,3 |
| TF1 BasicLSTMCell | kernel[:D] of ((D+H), 4H) | kernel[D:] | bias (4H) | i,j,f,o | 0,2,1,3 |
| TF1 LayerNormBasicLSTMCell | kernel[:D] | kernel[D:] | per-gate LN betas | i,j,f,o | 0,2,1,3 |
| Flax linen LSTMCell, OptimizedLSTMCell; nnx LSTMCell | ii, if (nnx: if_), ig, io kernels (D, H) | hi, hf, hg, ho kernels (H, H) | hi...ho biases (H) | i,f,g,o | 0,1,2,3 |
| Flax nnx OptimizedLSTMCell | dense_i kernel (D, 4H) | dense_h kernel (H, 4H) | dense_h bias (4H) | i,f,g,o | 0,1,2,3 |

| framework | functions | forget-gate bias | source read |
|---|---|---|---|
| PyTorch | from_torch, to_torch | none | torch/nn/modules/rnn.py |
| Keras 3 | from_keras, to_keras | stored (unit_forget_bias) | keras/src/layers/rnn/lstm.py |
| ONNX (opset 22) | from_onnx, to_onnx, from_onnx_model, to_onnx_model | none | onnx/defs/rnn/defs.cc, onnx/reference/ops/op_lstm.py |
| haste | from_haste, to_haste | stored (forget_bias) | haste_pytorch/lstm.py, layer_norm_lstm.py |
| TF1 | from_tf1, to_tf1 | run time: LSTM(forget_bias=) | tensorflow/python/ops/rnn_cell_impl.py |
| TF1 contrib | from_tf1_layer_norm, to_tf1_layer_norm | run time | tensorflow/contrib/rnn/python/ops/rnn_cell.py |
| Flax (JAX) | from_flax, to_flax | none (bias init zeros) | flax/linen/recurrent.py, flax/nnx/nn/recurrent.py |

idx is the gate index map, canonical_block[k] = source_block[idx[k]]; it lives in one place,
layouts.LAYOUTS, and every converter reorders with layouts.to_canonical / from_canonical.
(Flax's is flax_lstm.FLAX_LAYOUT for now, passed to the same functions.) Flax's carry is (c, h)
(flax_lstm.FLAX_CARRY); a float64 conversion needs JAX's x64 mode on (a ValueError names it).

The vanilla RNN (refnorm.RNN: h' = φ(x Wx + h Wh + b), Wx (D, H), Wh (H, H), b (H), φ = tanh or
relu, the cell's nonlinearity) goes through the same functions: from_torch, from_keras,
from_onnx, from_onnx_model and from_flax return a refnorm.RNN for a torch.nn.RNN / RNNCell, a
Keras SimpleRNN / SimpleRNNCell (or a list whose recurrent kernel is square), ONNX RNN arrays
(R [dirs, H, H]) or node, a Flax SimpleCell (or its params); to_torch, to_keras, to_onnx,
to_onnx_model and to_flax take a refnorm.RNN. The modules torch_rnn, keras_rnn, onnx_rnn and
flax_rnn hold them. One block, no gate order; arrays that do not carry the activation (Keras
and ONNX lists, Flax params alone) take nonlinearity= ("tanh", each peer's default, or
"relu"); a module's own is read (and a module of the other one refused on export).

| framework | input weights | recurrent weights | bias | activation | source read |
|---|---|---|---|---|---|
| PyTorch nn.RNN, RNNCell | weight_ih_l{k}[_reverse] (H, D) | weight_hh_l{k}... (H, H) | bias_ih + bias_hh | nonlinearity tanh, relu | torch/nn/modules/rnn.py |
| Keras 3 SimpleRNN, SimpleRNNCell | kernel (D, H) | recurrent_kernel (H, H) | bias (H) | activation "tanh", "relu" | keras/src/layers/rnn/simple_rnn.py |
| ONNX RNN (opset 22) | W [dirs, H, D] | R [dirs, H, H] | B [dirs, 2H]: Wb + Rb | activations Tanh, Relu | onnx/defs/rnn/defs.cc, onnx/reference/ops/op_rnn.py |
| Flax linen SimpleCell | i: kernel (D, H) | h: kernel (H, H) | i: bias (H) | activation_fn tanh, jax.nn.relu | flax/linen/recurrent.py |
| Flax nnx SimpleCell | dense_i: kernel (D, H) | dense_h: kernel (H, H) | dense_i: bias (H) | the same | flax/nnx/nn/recurrent.py |

Refused: a Flax SimpleCell with residual=True (h' = φ(... + h)), other activations, ONNX clip.
No framework here ships a normalised vanilla RNN (BN-RNN, LN-RNN), so there is no converter for
refnorm's BNRNN, SeqBNRNN or LNRNN.

The GRU (refnorm.GRU: gate blocks r, z, n; Wx (D, 3H), Wh (H, 3H), b (3H) and, reset "after",
b_hn (H) inside r ⊙ (...); derivations/gru.md) goes through the same functions too: a
torch.nn.GRU / GRUCell, a Keras GRU / GRUCell (reset_after True or False), ONNX GRU arrays
(R [dirs, 3H, H]) or node, a haste GRU or LayerNormGRU (the latter a refnorm.LNGRU) and a Flax
GRUCell give a refnorm.GRU; the modules torch_gru, keras_gru, onnx_gru, haste_gru and flax_gru
hold them. A peer's two biases fold as (b, b_hn): the r and z blocks of both sum into b, the
input n block is b's n block, the recurrent n block is b_hn (reset "after"); with the reset
"before" the two n blocks sum into b. ONNX arrays do not carry linear_before_reset: from_onnx
requires it (1: reset "after", torch.onnx's; 0: reset "before", the attribute's default).

| framework | input weights | recurrent weights | biases | gates | source read |
|---|---|---|---|---|---|
| PyTorch nn.GRU, GRUCell | weight_ih_l{k}[_reverse] (3H, D) | weight_hh_l{k}... (3H, H) | bias_ih (3H), bias_hh (3H): its n block is b_hn | r,z,n | torch/nn/modules/rnn.py |
| Keras 3 GRU, GRUCell | kernel (D, 3H) | recurrent_kernel (H, 3H) | bias (2, 3H) (reset_after=True) or (3H,) | z,r,h | keras/src/layers/rnn/gru.py |
| ONNX GRU (opset 22) | W [dirs, 3H, D] | R [dirs, 3H, H] | B [dirs, 6H] = [Wb, Rb]: linear_before_reset=1: b = Wb + [Rb_z, Rb_r, 0], b_hn = Rb_h; =0: b = Wb + Rb | z,r,h | onnx/defs/rnn/defs.cc, onnx/reference/ops/op_gru.py |
| haste GRU, LayerNormGRU | kernel (D, 3H) | recurrent_kernel (H, 3H) | bias, recurrent_bias (3H) | z,r,h | haste_pytorch/gru.py, layer_norm_gru.py |
| Flax linen GRUCell | ir, iz, in: kernel (D, H) | hr, hz, hn: kernel (H, H) | ir, iz, in biases = b; hn bias = b_hn | r,z,n | flax/linen/recurrent.py |
| Flax nnx GRUCell | dense_i: kernel (D, 3H) | dense_h: kernel (H, 3H) | dense_i bias (3H) = b; no b_hn (0 on import; a non-zero one refused on export) | r,z,n | flax/nnx/nn/recurrent.py |

Refused: ONNX clip and activations other than (Sigmoid, Tanh), Flax gate_fn / activation_fn
other than sigmoid / tanh, haste zoneout; a reset-"before" GRU goes only where the peer computes
it (Keras reset_after=False, ONNX linear_before_reset=0). Of the normalised GRUs only LNGRU has
a peer (haste's LayerNormGRU).

Stacks: from_torch(module) on a torch.nn.LSTM, GRU or RNN with num_layers > 1 or
bidirectional=True, called without layer= and reverse=, returns a refnorm.Stack (between=None;
the module's dropout, and nonlinearity for an RNN) holding every layer and direction, each read
by the one-cell converter above: weight_*_l{k} into net.params["l{k}.fwd.<name>"],
weight_*_l{k}_reverse into "l{k}.bwd.<name>". With layer= or reverse= it returns that one cell,
and a one-layer unidirectional module gives its cell. to_torch(stack) builds the torch module
back; a Stack with normalisation between its layers, or of a cell torch has not, is refused.
interop.torch_stack holds them. from_keras likewise reads a Keras Bidirectional (merge_mode
"concat"), or a Sequential / list [recurrent, BatchNormalization, recurrent] whose norm becomes
between="seq_bn" (its statistics over the valid frames; norm_eps = epsilon, norm_momentum =
1 - momentum), into a Stack, and to_keras(stack, obj) writes one back (interop.keras_stack).

Layer-normalised cells (each built with its refnorm.presets function):

* haste LayerNormLSTM -> presets.haste_layer_norm_lstm, LNLSTM(per_gate=False, eps=1e-5): raw c
  carried, separate terms; gamma[0] -> gamma_x, gamma[1] -> gamma_h (both reordered),
  gamma_h -> gamma_c, beta_h -> beta_c.
* TF1 LayerNormBasicLSTMCell -> presets.tf1_layer_norm_basic_lstm, LNLSTM(terms="summed",
  per_gate=True, carry="normalized", eps=1e-12, forget_bias=...): <scope>/gamma -> gamma_z and
  <scope>/beta -> b for the scopes input (i), forget (f), transform (g), output (o);
  state/gamma, state/beta -> gamma_c, beta_c.

Conventions shared by every converter:
* two biases -> one: their sum; one -> two: the sum goes into the first (bias_ih, Wb), zeros into
  the second (bias_hh, Rb).
* refnorm's run-time forget_bias is folded into the stored bias when exporting to a framework
  that has none (torch, Keras, ONNX, haste); TF1 has one, so from_tf1 sets it on the cell.
* refnorm is time-major (T, B, D). batch_first (torch), Keras's batch-major input and ONNX's
  layout attribute change how data is laid out, not the weights: transpose the data yourself.
* a reverse direction (torch reverse=True, ONNX direction 1) is a cell run over the
  time-reversed sequence, each sequence reversed within its own length (Keras go_backwards also
  returns its outputs in reversed time order).
* unsupported forms raise ValueError: projections (proj_size), peepholes, other activations,
  clip, coupled gates, zoneout, layers or directions the module does not have, modules of a
  cell refnorm has not (a Flax MGUCell, ...).
"""
from .flax_lstm import FLAX_CARRY, FLAX_LAYOUT, from_flax, to_flax
from .haste_lstm import from_haste, to_haste
from .keras_lstm import from_keras, to_keras
from .layouts import LAYOUTS, GateLayout, from_canonical, reorder_gates, to_canonical
from .onnx_lstm import ONNX_OPSET, from_onnx, from_onnx_model, to_onnx, to_onnx_model
from .tf1_lstm import TF1_LN_SCOPES, from_tf1, from_tf1_layer_norm, to_tf1, to_tf1_layer_norm
from .torch_lstm import from_torch, to_torch

__all__ = ["LAYOUTS", "GateLayout", "reorder_gates", "to_canonical", "from_canonical",
           "from_torch", "to_torch", "from_keras", "to_keras", "from_onnx", "from_onnx_model",
           "to_onnx", "to_onnx_model", "ONNX_OPSET", "from_haste", "to_haste",
           "from_tf1", "to_tf1", "from_tf1_layer_norm", "to_tf1_layer_norm", "TF1_LN_SCOPES",
           "from_flax", "to_flax", "FLAX_LAYOUT", "FLAX_CARRY"]
