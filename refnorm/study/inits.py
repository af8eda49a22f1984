"""Weight initialisation schemes for the sweep, written as "scheme" or "scheme:scale".

    gauss:s      Wx ~ N(0, (s/√D)²), Wh ~ N(0, (s/√H)²)       s = 1 is LeCun's normal init
    uniform:s    Wx, Wh ~ U(−s/√H, s/√H)                      s = 1 is torch.nn.LSTM's default
    orthogonal:s Wx, Wh with orthonormal rows (QR of a Gaussian), times s (default 1);
                 Cooijmans et al. 2016 sec. 4
    identity:s   Wh = s·[I | I | I | I] (every gate block the identity: the recurrent term
                 starts as a copy of h_{t-1}; Le et al. 2015's IRNN idea), Wx ~ N(0, 1/D)
    default      the cell's own constructor init, untouched

Every scheme except "default" sets the bias b to 0 and leaves the gains γ and shift β_c at the
cell's defaults (0.1 for BNLSTM, 1 for SeqBNLSTM and LNLSTM, β_c = 0), so the cells differ only
by their normalisation. A normalised term BN(h Wh) or LN(h Wh) is invariant to the scale of Wh
(up to eps): whatever "s" does to such a cell, it does through the direction of W, not its size.
"""
import numpy as np

from ..cells import orthogonal_init

SCHEMES = ("gauss", "uniform", "orthogonal", "identity", "default")


def parse_init(spec):
    """"gauss:0.5" -> ("gauss", 0.5); "orthogonal" -> ("orthogonal", 1.0)."""
    name, _, scale = str(spec).partition(":")
    if name not in SCHEMES:
        raise ValueError(f"unknown init scheme {name!r} in {spec!r}: choose from {SCHEMES}")
    if name == "default" and scale:
        raise ValueError(f"init 'default' takes no scale, got {spec!r}")
    try:
        value = float(scale) if scale else 1.0
    except ValueError:
        raise ValueError(f"init scale must be a number, got {spec!r}") from None
    if not value > 0:
        raise ValueError(f"init scale must be positive, got {spec!r}")
    return name, value


def init_weights(cell, spec, rng):
    """Redraw cell.params["Wx"], ["Wh"] (and zero ["b"]) in place by the scheme `spec`."""
    name, s = parse_init(spec)
    if name == "default":
        return cell
    D, H = cell.input_size, cell.hidden_size
    if name == "gauss":
        Wx = rng.standard_normal((D, 4 * H)) * s / np.sqrt(D)
        Wh = rng.standard_normal((H, 4 * H)) * s / np.sqrt(H)
    elif name == "uniform":
        k = s / np.sqrt(H)
        Wx = rng.uniform(-k, k, (D, 4 * H))
        Wh = rng.uniform(-k, k, (H, 4 * H))
    elif name == "orthogonal":
        Wx = s * orthogonal_init(rng, (D, 4 * H))
        Wh = s * orthogonal_init(rng, (H, 4 * H))
    else:  # identity
        Wx = rng.standard_normal((D, 4 * H)) / np.sqrt(D)
        Wh = s * np.tile(np.eye(H), (1, 4))
    cell.params["Wx"][...] = Wx
    cell.params["Wh"][...] = Wh
    cell.params["b"][...] = 0.0
    return cell
