"""Where the threads of one step loop meet inside compiled code: `meet(sync, n)`.

The per-step batch norm cells (BN-LSTM, BN-GRU, BN-RNN) split their step loop over the threads
by rows, as the other cells do (threads.py), but each step needs the whole batch's statistics:
every thread sums its own rows (norms.batchnorm_block_stats, batchnorm_block_grad_sums), and no
thread may join the sums (batchnorm_join_stats, batchnorm_join_grad_sums) before all have
written theirs. They meet there, twice a step forward and twice backward. A meeting of two
running threads cost 1.2 µs on the 2-core Zen 4 machine (20000 meetings, each with a write and
a read of the other thread's value between them), against tens of microseconds for one step
of BN-LSTM at (16, 64).

How: a counter of arrivals and a generation number in a small int64 array shared by the
threads, changed by atomic operations (LLVM's seq_cst atomicrmw and atomic loads, emitted by the
intrinsics below; Numba has no atomics of its own on the CPU). The last to arrive resets the
counter and advances the generation; the others wait for the generation to move, spinning
with the CPU's pause hint, then giving their core away (sched_yield) so that a loop whose
threads share cores with other programs still advances.

If one thread fails, the Python side marks the array aborted (ABORTED) and the waiting threads
raise instead of waiting for ever (threads.run_meeting).
"""
import platform
import sys

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .common import JIT

ARRIVED, GENERATION, ABORTED = 0, 1, 2      # the fields of a sync array: np.zeros(3, np.int64)
SPINS = 4000        # pause-spins before a waiting thread starts giving its core away
ABORT_MESSAGE = "another thread of this step loop failed"
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _is_sync(sync):
    return isinstance(sync, types.Array) and sync.dtype == types.int64 and sync.ndim == 1


def _slot(context, builder, sig, args):
    """Pointer to sync[i] (sig.args[0] an int64 array, args[1] the index)."""
    array = context.make_array(sig.args[0])(context, builder, args[0])
    return builder.gep(array.data, [args[1]])


@intrinsic
def atomic_add(typingctx, sync, i, value):
    """sync[i] += value atomically (seq_cst); returns the value before."""
    if not _is_sync(sync):
        return None
    sig = types.int64(sync, types.intp, types.int64)

    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _slot(context, builder, sig, args), args[2], "seq_cst")
    return sig, codegen


@intrinsic
def atomic_load(typingctx, sync, i):
    """sync[i], read atomically (seq_cst): never a value kept in a register."""
    if not _is_sync(sync):
        return None
    sig = types.int64(sync, types.intp)

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_slot(context, builder, sig, args), "seq_cst", 8)
    return sig, codegen


@intrinsic
def atomic_store(typingctx, sync, i, value):
    """sync[i] = value atomically (seq_cst)."""
    if not _is_sync(sync):
        return None
    sig = types.void(sync, types.intp, types.int64)

    def codegen(context, builder, sig, args):
        builder.store_atomic(args[2], _slot(context, builder, sig, args), "seq_cst", 8)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def relax(typingctx, spins):
    """One turn of a wait: the pause hint while spins < SPINS (x86; nothing elsewhere), else
    sched_yield() (POSIX; nothing elsewhere)."""
    sig = types.void(types.intp)

    def codegen(context, builder, sig, args):
        module = builder.module
        short = builder.icmp_signed("<", args[0], ir.Constant(args[0].type, SPINS))
        with builder.if_else(short) as (spin, give):
            with spin:
                if X86:
                    pause = cgutils.get_or_insert_function(
                        module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
                    builder.call(pause, [])
            with give:
                if sys.platform != "win32":
                    yield_ = cgutils.get_or_insert_function(
                        module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
                    builder.call(yield_, [])
        return context.get_dummy_value()
    return sig, codegen


@njit(**JIT)
def meet(sync, n):
    """Wait until all n threads sharing sync have called meet (n = 1: return at once). Raises
    if sync was marked aborted (another thread failed) while waiting."""
    if n == 1:
        return
    generation = atomic_load(sync, GENERATION)
    if atomic_add(sync, ARRIVED, 1) == n - 1:       # the last to arrive opens the way
        atomic_store(sync, ARRIVED, 0)
        atomic_add(sync, GENERATION, 1)
        return
    spins = 0
    while atomic_load(sync, GENERATION) == generation:
        if atomic_load(sync, ABORTED) != 0:
            raise RuntimeError(ABORT_MESSAGE)
        relax(spins)
        spins += 1


@njit(**JIT)
def column_block(F, k, n):
    """(f0, f1): thread k's share of F columns for the statistics, k of n, as equal as can be."""
    return F * k // n, F * (k + 1) // n


@njit(**JIT)
def add_columns(total, sums, j0, j1):
    """total[j0:j1] += sums[j0:j1]: thread k's share (column_block) of a gradient summed over
    the batch, from the joined sums of norms.batchnorm_join_grad_sums, so two threads never add
    into one element. On views from column 0: a loop from j0 kept Numba's negative-index
    wraparound test (j0 may be negative for all it knows) and stayed scalar."""
    own, part = total[j0:j1], sums[j0:j1]
    for j in range(own.shape[0]):
        own[j] += part[j]                                  # total += sums, columns j0 .. j1-1
