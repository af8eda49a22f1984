"""Training and measuring one model: a recurrent network with a linear readout on its last
hidden state h_T.

    model = build_model(stem, task, hidden_size, init, weight_rng, readout_rng, backend=...)
    history = train(model, task, epochs=..., batch_size=..., lr=..., clip=..., rng=rng,
                    probe=probe)
    evaluate(model, data)                      # {"loss", "metric"} with population statistics

The recurrent network `model.net` is, by the run's stem,
    a refnorm cell   every stem of refnorm.CELLS: the LSTM, vanilla-RNN and GRU families, each
                     plain, with per-step batch norm (bn_), sequence-wise batch norm (seq_bn_)
                     and layer norm (ln_)
    a refnorm.Stack  STACKS: two layers of LSTM cells, one direction, no dropout, with a
                     normalisation between them: "lstm2" none, "lstm2_seq_bn" sequence-wise
                     batch norm (STACK 6), "lstm2_ln" layer norm (STACK 7)
and the readout reads h_T of the cell, or of the stack's top layer.

Every gradient is refnorm's own: net.backward for the network (with dhT from the readout,
dhs = 0), readout.py for the readout; refnorm.optim.Adam updates both in place. Gradients are
clipped to a joint L2 norm of `clip` (the usual guard for recurrent nets; 0 disables it).

Gradient flow is read from the backward pass itself. For the probe batch, L its batch-mean loss,
at initialisation and after every epoch, in training mode (the statistics training sees):
    g_h[t] = ‖dL/dh̃_t‖_F over its (B, H) block   every cell (state_grads=True); None for a
                                                  stack, whose backward has no state_grads
    g_c[t] = ‖dL/dc̃_t‖_F over its (B, H) block   LSTM-family cells only; None otherwise
    g_x[t] = ‖dL/dx_t‖_F over its (B, D) block    every model: what reaches the input, the "x"
                                                  gradient every backward returns
"""
import numpy as np

from .. import CELLS, Stack
from ..optim import Adam, clip_grad_norm
from .inits import init_weights
from .readout import Readout
from .tasks import Dataset, minibatches

# the 2-layer LSTM stacks by stem: the normalisation between their layers (Stack's `between`)
STACKS = {"lstm2": None, "lstm2_seq_bn": "seq_bn", "lstm2_ln": "ln"}
STACK_CELL, STACK_LAYERS = "lstm", 2
MODEL_STEMS = tuple(CELLS) + tuple(STACKS)        # every stem a run may train

PER_STEP_BN_STEMS = ("bn_lstm", "bn_rnn", "bn_gru")             # one population slot per step
BN_CELL_STEMS = PER_STEP_BN_STEMS + ("seq_bn_lstm", "seq_bn_rnn", "seq_bn_gru")   # pad_stats
# every model with population statistics: re-estimated before each evaluation, and the ones a
# training-mode loss (batch statistics) means something for
BN_STEMS = BN_CELL_STEMS + ("lstm2_seq_bn",)


class Model:
    """A recurrent network `net` (a refnorm cell or Stack) of kind `stem`, and its readout.
    `params` maps "net.<name>" and "readout.<name>" to the very arrays of net.params and
    readout.params (so the optimizer updates them in place)."""

    def __init__(self, stem, net, readout):
        self.stem, self.net, self.readout = stem, net, readout
        self.params = {**{f"net.{k}": v for k, v in net.params.items()},
                       **{f"readout.{k}": v for k, v in readout.params.items()}}

    @property
    def is_stack(self):
        return isinstance(self.net, Stack)

    def forward(self, x, lengths, *, training, update_stats=False):
        """(h_T (B, H), cache): the last valid hidden state the readout reads (a stack's: its
        top layer's, row L - 1 of the final hT (L, B, H)) and the network's cache."""
        _, finals, cache = self.net.forward(x, lengths=lengths, training=training,
                                            update_stats=update_stats)
        if self.is_stack:
            return finals[0][-1], cache
        if "c" in self.net.STATES:                   # the LSTM family: (hT, cT)
            return finals[0], cache
        return finals, cache                         # one state: hT itself

    def backward(self, cache, dhT, *, state_grads=False):
        """The network's gradients given dL/dh_T = dhT (B, H) and no other output read: every
        net.params name and "x" (T, B, D); with state_grads (cells only) "dh" (and "dc")."""
        net = self.net
        if self.is_stack:
            T, B, _ = cache.x.shape
            dys = np.zeros((T, B, net.output_size), dtype=net.dtype)      # no step output read
            dhT_layers = np.zeros((net.num_layers, B, net.hidden_size), dtype=net.dtype)
            dhT_layers[-1] = dhT                                          # the top layer's h_T
            return net.backward(dys, cache, dhT_layers)
        if "c" in net.STATES:
            return net.backward(None, cache, dhT, None, state_grads=state_grads)
        return net.backward(None, cache, dhT, state_grads=state_grads)


def build_model(stem, task, hidden_size, init, weight_rng, readout_rng, *, backend="numpy",
                pad_stats="exclude"):
    """A fresh network of kind `stem` with its Wx, Wh drawn by the init scheme from weight_rng
    (a stack: every layer's, inits.py), and a readout drawn from readout_rng. Given the same
    generators, every cell of one family gets the very same weights (the families' Wx, Wh differ
    in shape: 4, 3 or 1 gate blocks), and every scale of one scheme the same draws, scaled; every
    model the same readout. The per-step BN cells get one population slot per step of the task's
    training length (max_steps = T): inference past T reuses the last slot, the Cooijmans rule.
    Every BN cell takes `pad_stats`; the stacks' between-layer norms have no such option."""
    if stem not in MODEL_STEMS:
        raise ValueError(f"unknown model {stem!r}: choose from {MODEL_STEMS}")
    seed = int(weight_rng.integers(2 ** 31))
    if stem in STACKS:
        net = Stack(STACK_CELL, task.input_size, hidden_size, num_layers=STACK_LAYERS,
                    between=STACKS[stem], seed=seed, backend=backend)
    else:
        options = {}
        if stem in PER_STEP_BN_STEMS:
            options["max_steps"] = task.T
        if stem in BN_CELL_STEMS:
            options["pad_stats"] = pad_stats
        net = CELLS[stem](task.input_size, hidden_size, seed=seed, backend=backend, **options)
    init_weights(net, init, weight_rng)
    return Model(stem, net, Readout(hidden_size, task.n_outputs, task.kind, readout_rng))


def forward_backward(model, batch, *, update_stats=False, state_grads=False):
    """One training-mode pass over `batch`: (loss, grads by model.params name, the network's
    grads, cache). The network's grads hold "x" (T, B, D), and with state_grads (cells only)
    "dh", "dc" (T, B, H)."""
    hT, cache = model.forward(batch.x, batch.lengths, training=True, update_stats=update_stats)
    loss, _, readout_grads, dhT = model.readout.loss_and_grads(hT, batch.y)
    net_grads = model.backward(cache, dhT, state_grads=state_grads)
    grads = {**{f"net.{k}": net_grads[k] for k in model.net.params},
             **{f"readout.{k}": v for k, v in readout_grads.items()}}
    return loss, grads, net_grads, cache


def evaluate(model, data, *, batch_size=256, training=False):
    """Mean loss and metric (accuracy, or MSE for regression) over `data`, in inference mode
    (population statistics) unless training=True (each batch's own statistics, not recorded;
    a last batch of one row, which has none, is skipped)."""
    total_loss, total_metric, n = 0.0, 0.0, 0
    for index in minibatches(data, batch_size):
        if training and len(index) < 2:
            continue
        batch = data.take(index)
        hT, _ = model.forward(batch.x, batch.lengths, training=training)
        loss, scores = model.readout.loss(hT, batch.y)
        total_loss += loss * len(index)
        total_metric += model.readout.metric(scores, batch.y)
        n += len(index)
    return {"loss": total_loss / n, "metric": total_metric / n}


def estimate_population_stats(model, data, rng, batch_size, max_batches=None):
    """Models with population statistics (BN_STEMS): replace them by the exact average over (up
    to max_batches) shuffled training batches with the current weights, (BN 14): a BN cell by
    its own estimate_stats, a stack by estimate_between_stats."""
    if model.stem not in BN_STEMS:
        return
    batches = [{"x": data.x[:, i], "lengths": data.lengths[i]}
               for i in minibatches(data, batch_size, rng)[:max_batches]]
    if model.is_stack:
        estimate_between_stats(model.net, batches)
    else:
        model.net.estimate_stats(batches)


def estimate_between_stats(net, batches):
    """(BN 14) for the between-layer batch norms of a Stack with between="seq_bn", as
    cell.estimate_stats does it for a BN cell: a training forward over every batch with the
    weights frozen (update_stats=False), then each norm's population mean and (biased) variance,
    net.stats["l{l}.norm.mean" | ".var"] (F,), set to the plain average of the batch
    statistics of the batches with at least two valid frames. The Stack itself offers only the
    running average (BN 13) with norm_momentum = 0.1 that update_stats=True blends in: after 16
    batches it would still hold 0.9^16 = 19 % of the statistics it started from."""
    if net.between != "seq_bn":
        raise ValueError(f"estimate_between_stats is written for between='seq_bn' (one set of "
                         f"statistics per norm), not {net.between!r}")
    sums = {}                                      # layer -> [Σ mean (F,), Σ var (F,), batches]
    for batch in batches:
        *_, cache = net.forward(training=True, update_stats=False, **batch)
        for layer, norm in enumerate(cache.norms):
            if norm["count"] < 2:                  # one frame carries no spread
                continue
            total = sums.setdefault(layer, [0.0, 0.0, 0])
            total[0] = total[0] + norm["mean"]
            total[1] = total[1] + norm["var"]
            total[2] += 1
    if not sums:
        raise ValueError("batches gave no norm with at least two valid frames to average")
    for layer, (mean_sum, var_sum, n) in sums.items():
        net.stats[f"l{layer}.norm.mean"][...] = mean_sum / n                    # (BN 14)
        net.stats[f"l{layer}.norm.var"][...] = var_sum / n


def step_norms(g):
    """‖g_t‖_F over each step's block: (T,) from g (T, B, F)."""
    return np.sqrt(np.sum(g ** 2, axis=(1, 2)))                               # (T,)


def gradient_flow(model, probe):
    """g_h[t], g_c[t], g_x[t] (T,) on the probe batch (None where the module docstring says),
    the loss there and the per-step statistics."""
    loss, _, net_grads, cache = forward_backward(model, probe, update_stats=False,
                                                 state_grads=not model.is_stack)
    return {"g_h": step_norms(net_grads["dh"]) if "dh" in net_grads else None,
            "g_c": step_norms(net_grads["dc"]) if "dc" in net_grads else None,
            "g_x": step_norms(net_grads["x"]),
            "loss": loss, "stats": step_statistics(model, cache)}


def state_variances(cache):
    """c_var (cells with a cell state c) and h_var, each (T,): the batch variance of the raw
    cell c̃_t and of h_t at every step, averaged over units, from a cell's cache."""
    out = {}
    if hasattr(cache, "c"):
        out["c_var"] = cache.c[1:].var(axis=1).mean(axis=1)                   # (T,)
    out["h_var"] = cache.h[1:].var(axis=1).mean(axis=1)                       # (T,)
    return out


def step_statistics(model, cache):
    """Per-step statistics of a training-mode pass, each (T,):
    h_var   batch variance of h_t, averaged over units (every cell; a stack: its top layer's
            h_t, which is its output ys at every valid step)
    c_var   batch variance of the raw cell c̃_t, averaged over units (the LSTM-family cells; a
            stack of LSTM cells: its top layer's)
    norm_var_c   the variance the cell's normaliser of c̃_t divides by (BNLSTM: batch variance
            of step t; LNLSTM: each row's variance over units, averaged over rows; none for LSTM
            and SeqBNLSTM, which do not normalise c̃);
    norm_var_h   BNLSTM only: the batch variance of the recurrent term h_{t-1} Wh at step t."""
    if model.is_stack:
        return state_variances(cache.cells[-1][0])       # the top layer's one direction
    out = state_variances(cache)
    if model.stem == "bn_lstm":
        out["norm_var_c"] = cache.var_c.mean(axis=1)
        out["norm_var_h"] = cache.var_h.mean(axis=1)
    elif model.stem == "ln_lstm":
        out["norm_var_c"] = cache.var_c.mean(axis=(1, 2))
    return out


def train(model, task, *, epochs, batch_size, lr, clip, rng, probe, stat_batches=16):
    """Adam on model.params for `epochs` passes over task.train. Returns the history:
    step_loss and grad_norm (per step, before clipping), test_loss and test_metric (per epoch),
    grad_flow (at init and after each epoch), diverged (a step gave a non-finite loss or
    gradient: training stops there).

    Before each evaluation the population statistics of the models that have them (BN_STEMS)
    are re-estimated from `stat_batches` training batches with the weights of that moment (the
    running averages lag behind weights that move fast, which would blur the comparison; so
    training passes do not update them at all)."""
    opt = Adam(model.params, lr=lr)
    names = list(model.params)
    history = {"step_loss": [], "test_loss": [], "test_metric": [], "grad_norm": [],
               "grad_flow": [gradient_flow(model, probe)], "diverged": False}
    for _ in range(epochs):
        for index in minibatches(task.train, batch_size, rng):
            # the running population statistics are not updated (update_stats=False): they
            # are re-estimated exactly before every evaluation below
            loss, grads, _, _ = forward_backward(model, task.train.take(index),
                                                 update_stats=False)
            if not np.isfinite(loss):
                history["diverged"] = True
                break
            if clip:
                grads, norm = clip_grad_norm(grads, names, clip)
            else:
                norm = float(np.sqrt(sum(np.sum(g * g) for g in grads.values())))
            if not np.isfinite(norm):
                history["diverged"] = True
                break
            opt.step(grads)
            history["step_loss"].append(loss)
            history["grad_norm"].append(norm)
        if history["diverged"]:
            break
        estimate_population_stats(model, task.train, rng, batch_size, stat_batches)
        result = evaluate(model, task.test)
        history["test_loss"].append(result["loss"])
        history["test_metric"].append(result["metric"])
        history["grad_flow"].append(gradient_flow(model, probe))
    return history


def probe_batch(data, size):
    """The first `size` sequences of `data` (full length), the fixed batch on which gradient
    flow is measured."""
    index = np.arange(min(size, len(data)))
    return Dataset(data.x[:, index], data.lengths[index], data.y[index])
