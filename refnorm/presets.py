"""Named presets: the refnorm cell and options that reproduce one peer's cell exactly.

    cell = refnorm.presets.tfa_layer_norm_lstm(input_size, hidden_size, seed=0)

Each preset is a function (input_size, hidden_size, **overrides) -> cell; overrides go to the
cell's constructor (seed, dtype, backend, or an option you want to change). The docstring of each
names the source file it reproduces and what it does not cover. The options are derived in
derivations/variants.md; the conventions table of all peers is in the README.

What a preset fixes is the *function* the peer computes. Weights are not the peer's init: copy
the peer's weights with refnorm.interop (or refnorm.validate, which does it for you).
Everywhere refnorm's layout is canonical: z = x Wx + h Wh + b, gate blocks i, f, g, o,
time-major (T, B, ·), and outputs 0 at padded steps; the converters reorder.
"""
from .cells import BNLSTM, GRU, LNGRU, LNLSTM, LSTM, RNN, SeqBNLSTM


def _preset(cls, hold_zero=(), **options):
    def make(input_size, hidden_size, **overrides):
        return cls(input_size, hidden_size, **{**options, **overrides})
    make.cls, make.options, make.hold_zero = cls, options, tuple(hold_zero)
    return make


def _document(make, name, doc):
    make.__name__ = make.__qualname__ = name
    make.__doc__ = doc
    return make


PRESETS = {}


def _register(name, cls, doc, **options):
    """options go to the cell; hold_zero names params the peer does not have (they must stay
    0 for the preset to be the peer's function)."""
    make = _document(_preset(cls, **options), name, doc)
    PRESETS[name] = make
    globals()[name] = make
    return make


# -- vanilla LSTM -----------------------------------------------------------------------------
_register("torch_lstm", LSTM, """PyTorch torch.nn.LSTM / nn.LSTMCell (torch/nn/modules/rnn.py).

Gate order i, f, g, o; weight_ih (4H, D) = Wxᵀ, weight_hh (4H, H) = Whᵀ; the two biases bias_ih +
bias_hh = b. Packed sequences: outputs 0 at padded steps, h_n / c_n at each sequence's last valid
step, as refnorm. No options: refnorm.LSTM is this cell.""")

_register("keras_lstm", LSTM, """Keras 3 keras.layers.LSTM (keras/src/layers/rnn/lstm.py).

Gate order i, f, c, o (= i, f, g, o); kernel (D, 4H) = Wx, recurrent_kernel (H, 4H) = Wh, one
bias. unit_forget_bias=True stores 1 in the forget block of the bias at init
(forget_bias_init=1.0). Masked steps carry the state; Keras outputs the previous output there
(refnorm outputs 0), so compare valid steps.""", forget_bias_init=1.0)

_register("onnx_lstm", LSTM, """ONNX LSTM operator (onnx/reference/ops/op_lstm.py, opset 14/22).

Gate order i, o, f, c; W [dirs, 4H, D], R [dirs, 4H, H], B [dirs, 8H] = [Wb, Rb] (b = Wb + Rb).
Default activations (sigmoid, tanh, tanh), no clip, input_forget=0, no peepholes (refnorm
rejects non-zero peepholes). With sequence_lens, Y is 0 at padded steps, as in refnorm.""")

_register("haste_lstm", LSTM, """haste LSTM (lmnt-com/haste frameworks/pytorch/lstm.py, pip
haste-pytorch-cpu 0.5.5).

Gate order i, g, f, o; kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H) with forget_bias=1.0
written into bias[2H:3H] at init (forget_bias_init=1.0). Outputs at padded steps are not masked
by haste; the final state is taken at `lengths`. Zoneout and DropConnect are not reproduced.""",
          forget_bias_init=1.0)

_register("tf1_basic_lstm", LSTM, """TF1 tf.nn.rnn_cell.BasicLSTMCell
(tensorflow/python/ops/rnn_cell_impl.py).

One kernel ((D + H), 4H) on concat[x, h] = Wx stacked on Wh, gate order i, j, f, o (j = g), and
forget_bias (1.0) added to the forget pre-activation at run time, not stored
(forget_bias=1.0, (VAR 1)).""", forget_bias=1.0)

# -- layer-normalised LSTM --------------------------------------------------------------------
_register("ba_layer_norm_lstm", LNLSTM, """Ba, Kiros & Hinton 2016 (arXiv 1607.06450),
supplementary eqs. 20-22: LN over the joint 4H vector of each gate term separately, LN(c_t)
inside the output tanh only, raw c_t carried, gains 1, shifts 0, eps 1e-5 (the paper has none).
refnorm.LNLSTM's defaults.""")

_register("haste_layer_norm_lstm", LNLSTM, """haste LayerNormLSTM (lmnt-com/haste
frameworks/pytorch/layer_norm_lstm.py and lib/layer_norm_lstm_forward_gpu.cu.cc; pip
haste-pytorch-cpu 0.5.5; haste issue #1 states the function).

The paper's cell: joint-4H LN of each term with gain only (gamma (2, 4H): gamma[0] input term,
gamma[1] recurrent term), one bias after both, LN(c) with gamma_h, beta_h inside the tanh, raw c
carried, eps 1e-5, biased two-pass variance. forget_bias=1.0 stored in the bias at init.""",
          forget_bias_init=1.0)

_register("torch_fastrnns_layer_norm_lstm", LNLSTM, """PyTorch fastrnns LayerNormLSTMCell
(pytorch/pytorch benchmarks/fastrnns/custom_lstms.py, with nn.LayerNorm; eps 1e-5).

igates = layernorm_i(x W_ihᵀ), hgates = layernorm_h(h W_hhᵀ), gates = igates + hgates with no
separate bias: the two LayerNorm biases are the shifts (term_beta=True, beta_x = layernorm_i.bias,
beta_h = layernorm_h.bias), and refnorm's b must stay 0 (the peer has no such parameter; its
gradient is reported but has no counterpart). cy = layernorm_c(f cx + i g) is the carried state
(carry="normalized"). The decompose_layernorm=True variant (fastrnns' own LayerNorm,
(x - mu) / x.std(unbiased=False), no eps) is this preset with eps=0; where a row has zero
variance (e.g. h0 = 0) it divides 0 by 0 and returns NaN, where refnorm returns 0 and no
gradient through that LN (LN 11).""", carry="normalized", term_beta=True,
          hold_zero=("b",))

_register("tfa_layer_norm_lstm", LNLSTM, """TensorFlow Addons LayerNormLSTMCell
(tensorflow_addons/rnn/layer_norm_lstm_cell.py, after PRs #210 and #323).

z = kernel_norm(x K) + recurrent_norm(h R) + bias: joint-4H LayerNormalization of each term, with
gain and shift (term_beta=True), Keras bias after both, gate order i, f, c, o; c =
state_norm(f c + i g) is carried (carry="normalized"), h = o tanh(c); norm_epsilon 1e-3;
unit_forget_bias=True stores 1 in the forget block at init.""",
          carry="normalized", term_beta=True, eps=1e-3, forget_bias_init=1.0)

_register("tf1_layer_norm_basic_lstm", LNLSTM, """TF1 tf.contrib.rnn.LayerNormBasicLSTMCell
(tensorflow/contrib/rnn/python/ops/rnn_cell.py; LN by tf.contrib.layers.layer_norm, eps 1e-12).

One kernel ((D + H), 4H) on concat[x, h] with no bias; the projection is split i, j, f, o and
each block layer-normalised with its own gain and shift (terms="summed", per_gate=True: the
shifts are b, the gains gamma_z); forget_bias 1.0 added to f after the LN at run time
(forget_bias=1.0); new_c = LN(c f + i g) with the "state" gain and shift is carried
(carry="normalized"), h = tanh(new_c) o. Dropout (keep_prob < 1) is not reproduced.""",
          terms="summed", per_gate=True, carry="normalized", forget_bias=1.0, eps=1e-12)

# -- batch-normalised LSTM --------------------------------------------------------------------
_register("cooijmans_bn_lstm", BNLSTM, """Cooijmans et al. 2016, the authors' Theano code
(cooijmanstim/recurrent-batch-normalization penntreebank.py, text8.py).

Per-step statistics over the minibatch (biased variance), population statistics per step by an
EMA with alpha 0.05, steps past T_max use the last one; gains 0.1, shifts 0, eps 1e-5; raw c
carried (the --normalize-cell option is carry="normalized"); the forget block of the shared bias
is initialised to 1 (forget_bias_init=1.0; the paper does not mention it). The code's gate order
is g, f, i, o (the paper's f, i, o, g); refnorm's blocks are i, f, g, o. Fixed-length sequences in the
paper; refnorm excludes padded rows from the statistics.""",
          gamma_init=0.1, eps=1e-5, momentum=0.05, forget_bias_init=1.0)

_register("jihunchoi_bn_lstm", BNLSTM, """jihunchoi/recurrent-batch-normalization-pytorch
(bnlstm.py: BNLSTMCell with SeparatedBatchNorm1d per time step).

Gate order f, i, o, g; weight_ih (D, 4H), weight_hh (H, 4H) in x W form, one bias; bn_ih, bn_hh
have trainable shifts (term_beta=True) next to the bias; per-step statistics include padded rows
(pad_stats="include": the port runs the cell on the whole padded batch), and the running
statistics follow torch.nn.functional.batch_norm: momentum 0.1, unbiased running variance
(unbiased_var=True). SeparatedBatchNorm1d(max_length) clamps `time` to max_length - 1 in
training too, so every step at or past it updates the last buffer, one F.batch_norm call after
the other (max_steps=max_length with past_max_steps="clamp", (VAR 7)). Padded steps carry the
state; the port outputs the carried h there where refnorm outputs 0 (compare valid steps).""",
          term_beta=True, pad_stats="include", momentum=0.1, unbiased_var=True, gamma_init=0.1,
          past_max_steps="clamp")

_register("batchnorm_lstm", BNLSTM, """batchnorm-lstm 0.0.1 on PyPI (import batchnormlstm;
github.com/Zyx0Wu/batchnorm-lstm): layer_utils.py batchnorm_lstm_forward / _backward with
layers.py batchnorm_forward / batchnorm_backward_alt, as classifiers/lstm.py AdvancedLSTM
(use_batchnorm=True) runs them.

Gate order g, i, f, o ("a, i, f, o" in its code); w (D, 4H), u (H, 4H) in x W form, one bias
b; BN(x w; gamma_x, beta_x) + BN(h u; gamma_h, beta_h) + b with trainable shifts on both terms
(term_beta=True); c = g i + f c_prev is carried raw, h = tanh(BN(c; gamma_c, beta_c)) o; BN
with batch mean and biased np.var, eps 1e-5 inside the root, gradients through the statistics
(its own backward). ONE running statistics set per site for every time step, updated at each
step in turn by running = 0.9 running + 0.1 batch (its momentum 0.9 is refnorm's 0.1), biased:
max_steps=1 with past_max_steps="clamp" (VAR 7). Gains 1, shifts 0 at init (gamma_init=1.0).
Not covered: its running_var starts at 0 (refnorm's at 1: set cell.stats["var_*"] to 0 to
follow a fresh model); it has no masking (full-length batches only); dropout between layers;
and AdvancedLSTM.loss(X) without targets writes bn_param["test"] = "test" rather than
bn_param["mode"], so its "test" pass still uses (and updates) batch statistics, i.e. refnorm's
training=True; only batchnorm_lstm_forward called with mode "test" uses the running ones
(refnorm's training=False).""",
          term_beta=True, momentum=0.1, eps=1e-5, gamma_init=1.0, max_steps=1,
          past_max_steps="clamp")

# -- sequence-wise BN -------------------------------------------------------------------------
_register("laurent_seq_bn_lstm", SeqBNLSTM, """Sequence-wise BN of the input term (Laurent et al.
2016), as ballasn/Attentive_reader `bn_sequence` computes it (codes/att_reader/layers.py, branch
bn): statistics over the valid frames of the batch, n = Σ len_b, eps 1e-6. The Laurent et al.
paper itself was not read here (see shared/reference §7).""", eps=1e-6)

# -- vanilla RNN ------------------------------------------------------------------------------
# No peer ships a normalised vanilla RNN (torch, Keras, ONNX and Flax have the plain Elman cell
# only), so the RNN family's presets are the plain cell in each peer's layout, for the converters.
# The nonlinearity is the peer module's own option: pass nonlinearity="relu" as an override.
_register("torch_rnn", RNN, """PyTorch torch.nn.RNN / nn.RNNCell (torch/nn/modules/rnn.py).

h' = φ(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh), φ = tanh or relu (the module's nonlinearity);
weight_ih (H, D) = Wxᵀ, weight_hh (H, H) = Whᵀ, bias_ih + bias_hh = b. Packed sequences:
outputs 0 at padded steps, h_n at each sequence's last valid step, as refnorm. No options:
refnorm.RNN is this cell.""")

_register("keras_simple_rnn", RNN, """Keras 3 keras.layers.SimpleRNN / SimpleRNNCell
(keras/src/layers/rnn/simple_rnn.py).

h' = activation(x kernel + bias + h recurrent_kernel): kernel (D, H) = Wx, recurrent_kernel
(H, H) = Wh, bias (H) = b; activation tanh (default) or relu. Masked steps carry the state and
Keras outputs the previous output there (refnorm outputs 0), so compare valid steps.""")

_register("onnx_rnn", RNN, """ONNX RNN operator (onnx/defs/rnn/defs.cc, opset 14/22;
onnx/reference/ops/op_rnn.py).

H_t = f(X_t Wᵀ + H_{t-1} Rᵀ + Wb + Rb): W [dirs, H, D], R [dirs, H, H], B [dirs, 2H] = [Wb,
Rb] (b = Wb + Rb); activations Tanh (default) or Relu, no clip. With sequence_lens (onnxruntime)
Y is 0 at padded steps, as in refnorm; onnx's reference evaluator ignores sequence_lens and
knows Tanh and Affine only.""")

# -- the GRU family ---------------------------------------------------------------------------
_register("torch_gru", GRU, """PyTorch torch.nn.GRU / nn.GRUCell (torch/nn/modules/rnn.py).

Gate blocks r, z, n (refnorm's); weight_ih (3H, D) = Wxᵀ, weight_hh (3H, H) = Whᵀ; n = tanh(
x W_inᵀ + b_in + r ⊙ (h W_hnᵀ + b_hn)): reset after. b_ir + b_hr and b_iz + b_hz fold into b's
r, z blocks, b_in is b's n block, b_hn = bias_hh's n block. Packed sequences: outputs 0 at
padded steps, h_n at each sequence's last valid step, as refnorm.""", reset="after")

_register("haste_gru", GRU, """haste GRU (lmnt-com/haste frameworks/pytorch/gru.py, pip
haste-pytorch-cpu 0.5.5; GRUScript).

Gate blocks z, r, h; kernel (D, 3H), recurrent_kernel (H, 3H), bias and recurrent_bias (3H);
g = tanh(vx_h + r ⊙ vh_h) (reset after), h' = z h + (1 − z) g. bias + recurrent_bias's z, r parts
fold into b, recurrent_bias's h part is b_hn. Outputs at padded steps are not masked by haste;
the final state is taken at `lengths`. Zoneout and DropConnect are not reproduced.""",
          reset="after")

_register("haste_layer_norm_gru", LNGRU, """haste LayerNormGRU (lmnt-com/haste
frameworks/pytorch/layer_norm_gru.py, LayerNormGRUScript; pip haste-pytorch-cpu 0.5.5).

LN over 3H without shift of x kernel (gamma[0] -> gamma_x) and of h recurrent_kernel
(gamma[1] -> gamma_h), then bias and recurrent_bias as haste_gru; eps 1e-5 (F.layer_norm),
biased two-pass variance; derivations/ln_gru.md. refnorm.LNGRU is this cell.""", eps=1e-5)

_register("onnx_gru", GRU, """ONNX GRU operator with linear_before_reset=1, what torch.onnx
exports (torch/onnx/_internal/torchscript_exporter/symbolic_opset9.py; onnx/defs/rnn/defs.cc,
opset 22; onnx/reference/ops/op_gru.py).

Gate blocks z, r, h; W [dirs, 3H, D], R [dirs, 3H, H], B [dirs, 6H] = [Wb, Rb]; h = tanh(
X Whᵀ + r ⊙ (H Rhᵀ + Rbh) + Wbh): reset after. Wb + Rb's z, r parts fold into b, Wbh is b's n
block, Rbh is b_hn. Default activations (Sigmoid, Tanh), no clip. With sequence_lens
(onnxruntime) Y is 0 at padded steps, as in refnorm; onnx's reference evaluator ignores
sequence_lens.""", reset="after")

_register("onnx_gru_reset_before", GRU, """ONNX GRU operator with linear_before_reset=0, the
attribute's default (onnx/defs/rnn/defs.cc, opset 22; onnx/reference/ops/op_gru.py).

As onnx_gru but h = tanh(X Whᵀ + (r ⊙ H) Rhᵀ + Rbh + Wbh): reset before, b = Wb + Rb
(reordered z, r, h -> r, z, n), no b_hn.""", reset="before")

__all__ = sorted(PRESETS) + ["PRESETS"]
