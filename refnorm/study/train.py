"""Training and measuring one model: a refnorm cell with a linear readout on h_T.

    model = build_model(stem, task, hidden_size, init, weight_rng, readout_rng, backend=...)
    history = train(model, task, epochs=..., batch_size=..., lr=..., clip=..., rng=rng,
                    probe=probe)
    evaluate(model, data)                      # {"loss", "metric"} with population statistics

Every gradient is refnorm's own: cell.backward for the cell (with dhT from the readout, dhs = 0),
readout.py for the readout; refnorm.optim.Adam updates both in place. Gradients are clipped to a
joint L2 norm of `clip` (the usual guard for recurrent nets; 0 disables it).

Gradient flow is read from the backward pass itself (state_grads=True): for the probe batch,
    g_h[t] = ‖dL/dh̃_t‖_F,   g_c[t] = ‖dL/dc̃_t‖_F   over its (B, H) block, L the batch-mean loss,
at initialisation and after every epoch, in training mode (the statistics training sees).
"""
import numpy as np

from .. import CELLS
from ..optim import Adam, clip_grad_norm
from .inits import init_weights
from .readout import Readout
from .tasks import Dataset, minibatches

BN_STEMS = ("bn_lstm", "seq_bn_lstm")


class Model:
    """A cell and its readout; `params` maps "cell.<name>" and "readout.<name>" to the very
    arrays of cell.params and readout.params (so the optimizer updates them in place)."""

    def __init__(self, cell, readout):
        self.cell, self.readout = cell, readout
        self.params = {**{f"cell.{k}": v for k, v in cell.params.items()},
                       **{f"readout.{k}": v for k, v in readout.params.items()}}

    @property
    def stem(self):
        return self.cell.stem


def build_model(stem, task, hidden_size, init, weight_rng, readout_rng, *, backend="numpy",
                pad_stats="exclude"):
    """A fresh cell of kind `stem` with Wx, Wh drawn by the init scheme from weight_rng, and a
    readout drawn from readout_rng. Given the same generators, every cell gets the very same
    weights (and every scale of one scheme the same draws, scaled). BNLSTM gets one population
    slot per step of the task's training length (max_steps = T): inference past T reuses the
    last slot, the Cooijmans rule."""
    options = {}
    if stem == "bn_lstm":
        options["max_steps"] = task.T
    if stem in BN_STEMS:
        options["pad_stats"] = pad_stats
    cell = CELLS[stem](task.input_size, hidden_size, seed=int(weight_rng.integers(2 ** 31)),
                       backend=backend, **options)
    init_weights(cell, init, weight_rng)
    return Model(cell, Readout(hidden_size, task.n_outputs, task.kind, readout_rng))


def forward_backward(model, batch, *, update_stats=False, state_grads=False):
    """One training-mode pass over `batch`: (loss, grads by model.params name, cell grads,
    cache). cell grads hold "dh", "dc" (T, B, H) when state_grads is True."""
    cell = model.cell
    _, (hT, _), cache = cell.forward(batch.x, lengths=batch.lengths, training=True,
                                     update_stats=update_stats)
    loss, _, readout_grads, dhT = model.readout.loss_and_grads(hT, batch.y)
    cell_grads = cell.backward(None, cache, dhT, None, state_grads=state_grads)
    grads = {**{f"cell.{k}": cell_grads[k] for k in cell.params},
             **{f"readout.{k}": v for k, v in readout_grads.items()}}
    return loss, grads, cell_grads, cache


def evaluate(model, data, *, batch_size=256, training=False):
    """Mean loss and metric (accuracy, or MSE for regression) over `data`, in inference mode
    (population statistics) unless training=True (each batch's own statistics, not recorded;
    a last batch of one row, which has none, is skipped)."""
    total_loss, total_metric, n = 0.0, 0.0, 0
    for index in minibatches(data, batch_size):
        if training and len(index) < 2:
            continue
        batch = data.take(index)
        _, (hT, _), _ = model.cell.forward(batch.x, lengths=batch.lengths, training=training,
                                           update_stats=False)
        loss, scores = model.readout.loss(hT, batch.y)
        total_loss += loss * len(index)
        total_metric += model.readout.metric(scores, batch.y)
        n += len(index)
    return {"loss": total_loss / n, "metric": total_metric / n}


def estimate_population_stats(model, data, rng, batch_size, max_batches=None):
    """BN cells: replace the running statistics by the exact average over (up to max_batches)
    shuffled training batches with the current weights (cell.estimate_stats, (BN 14))."""
    if model.stem not in BN_STEMS:
        return
    batches = [{"x": data.x[:, i], "lengths": data.lengths[i]}
               for i in minibatches(data, batch_size, rng)[:max_batches]]
    model.cell.estimate_stats(batches)


def gradient_flow(model, probe):
    """g_h[t], g_c[t] (T,) on the probe batch, and the loss there."""
    loss, _, cell_grads, cache = forward_backward(model, probe, update_stats=False,
                                                  state_grads=True)
    g_h = np.sqrt(np.sum(cell_grads["dh"] ** 2, axis=(1, 2)))                 # (T,)
    g_c = np.sqrt(np.sum(cell_grads["dc"] ** 2, axis=(1, 2)))                 # (T,)
    return {"g_h": g_h, "g_c": g_c, "loss": loss, "stats": step_statistics(model, cache)}


def step_statistics(model, cache):
    """Per-step statistics of a training-mode pass, each (T,):
    c_var   batch variance of the raw cell c̃_t, averaged over units (every cell);
    norm_var_c   the variance the cell's normaliser of c̃_t divides by (BNLSTM: batch variance
            of step t; LNLSTM: each row's variance over units, averaged over rows; none for LSTM
            and SeqBNLSTM, which do not normalise c̃);
    norm_var_h   BNLSTM only: the batch variance of the recurrent term h_{t-1} Wh at step t."""
    c = cache.c[1:]                                                            # (T, B, H)
    out = {"c_var": c.var(axis=1).mean(axis=1)}
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

    Before each evaluation the BN cells' population statistics are re-estimated from
    `stat_batches` training batches with the weights of that moment (the running averages lag
    behind weights that move fast, which would blur the comparison; so training passes do not
    update them at all)."""
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
