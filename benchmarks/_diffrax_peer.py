"""diffrax peer for ``benchmarks/peers.py``: runs in its own process (JAX and torch kept apart).

    python benchmarks/_diffrax_peer.py SPEC.json

``SPEC.json`` names the workload (``kind``: ``mlp`` | ``linear`` | ``cnf`` | ``oscillators``; ``grad``),
the tolerances, the save times, ``repeats`` and ``threads``, and an ``npz`` file with the arrays (MLP
weights in torch's ``(out, in)`` layout, ``y0``, ``A`` for the linear system, ``eps`` for the CNF trace
estimate, ``omega`` for the oscillators), written
by ``peers.py`` from the torch problem so that both solve the same problem. One JSON object goes to
stdout: median wall time of ``repeats`` calls after a warm-up (``block_until_ready``), the first call
(compile + run), the final saved state, step statistics, NFE (counted, see ``counted_solve``), the time of
one vector-field evaluation measured inside a jitted loop, and ``status``.

Solver: ``diffrax.Tsit5`` with ``PIDController(rtol, atol)`` (defaults pcoeff=0, icoeff=1: an I
controller, error order 5 + 1), ``SaveAt(ts=ts)``, ``dt0=None`` (diffrax's initial step selection),
the whole solve ``jax.jit``-ed; for ``grad`` ``jax.jit(jax.grad(loss))`` with respect to the MLP
parameters, ``loss = sum(ys**2)`` over all saved states (diffrax's default
``RecursiveCheckpointAdjoint``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def _set_threads(threads: int) -> None:
    # must happen before jax is imported
    if threads == 1 and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    if threads >= 1:
        try:  # XLA has no thread-count flag for its CPU pools beyond the above: pin the process instead
            cpus = sorted(os.sched_getaffinity(0))
            # Also for one thread: XLA:CPU runs work on its own pools whatever the flags say, and a
            # diffrax process free to use a second core while torch gets one thread is not a fair
            # comparison (measured here: the 16-256-16 solve took 46 ms unpinned, 92 ms on one core).
            if threads < len(cpus):
                os.sched_setaffinity(0, cpus[:threads])
        except (AttributeError, OSError):
            pass


def main(argv: list[str]) -> dict:
    spec = json.loads(open(argv[1]).read())
    _set_threads(int(spec.get("threads", 1)))
    try:
        import jax
        import numpy as np

        x64 = spec["dtype"] == "float64"
        jax.config.update("jax_enable_x64", x64)
        jax.config.update("jax_platforms", "cpu")
        import diffrax
        import equinox  # noqa: F401  (diffrax needs it; a missing one is reported like diffrax)
        import jax.numpy as jnp
    except Exception as e:  # noqa: BLE001
        return {"status": f"missing: pip install .[bench] ({type(e).__name__}: {e})"}

    arrays = dict(np.load(spec["npz"]))
    dt = jnp.float64 if x64 else jnp.float32
    arrays = {k: jnp.asarray(v, dtype=dt) for k, v in arrays.items()}
    kind, grad = spec["kind"], bool(spec["grad"])
    rtol, atol = spec["rtol"], spec["atol"]
    ts = jnp.asarray(spec["ts"], dtype=dt)
    t0, t1 = float(spec["t0"]), float(spec["t1"])
    y0 = arrays["y0"]
    params = {k: arrays[k] for k in ("w1", "b1", "w2", "b2") if k in arrays}

    def mlp(p, z):
        return jnp.tanh(z @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]

    if kind == "mlp":
        def field(y, p):
            return mlp(p, y)
    elif kind == "linear":
        a = arrays["A"]

        def field(y, p):
            return a @ y
    elif kind == "cnf":
        eps = arrays["eps"]

        def field(y, p):
            z = y[:, :2]
            fz, vjp = jax.vjp(lambda zz: mlp(p, zz), z)
            (v,) = vjp(eps)  # eps^T df/dz, one vjp per evaluation
            tr = jnp.sum(v * eps, axis=-1, keepdims=True)  # Hutchinson estimate of tr(df/dz)
            return jnp.concatenate([fz, -tr], axis=-1)
    elif kind == "oscillators":
        omega, zeta = arrays["omega"], float(spec["zeta"])

        def field(y, p):  # one solve of the whole bank (diffrax's joint error norm, as our shared mode)
            x, v = y[:, 0], y[:, 1]
            return jnp.stack([v, -2 * zeta * omega * v - omega * omega * x], axis=1)
    else:
        return {"status": f"failed: unknown kind {kind}"}

    max_steps = int(spec.get("max_steps", 16384))

    def make_solve(vf):
        def solve(y0_, p):
            return diffrax.diffeqsolve(
                diffrax.ODETerm(lambda t, y, args: vf(y, args)), diffrax.Tsit5(), t0=t0, t1=t1, dt0=None,
                y0=y0_, args=p, saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps)
        return solve

    solve = make_solve(field)

    if grad:
        def loss(p):
            return jnp.sum(solve(y0, p).ys ** 2)

        run = jax.jit(jax.grad(loss))
    else:
        run = jax.jit(lambda p: solve(y0, p))

    def call():
        return jax.block_until_ready(run(params))

    repeats = int(spec["repeats"])
    try:
        t_start = time.perf_counter()
        out = call()
        first = time.perf_counter() - t_start
        call()  # second warm-up
        times = []
        for _ in range(repeats):
            t_start = time.perf_counter()
            call()
            times.append(time.perf_counter() - t_start)
        # the statistics, the final state and the NFE come from one more (untimed) no-grad solve whose
        # vector field counts its evaluations
        sol, nfe = counted_solve(jax, make_solve, field, y0, params)
    except Exception as e:  # noqa: BLE001
        return {"status": f"failed: {type(e).__name__}: {e}"[:400]}

    st = sol.stats
    num_steps, n_acc, n_rej = (int(st["num_steps"]), int(st["num_accepted_steps"]),
                               int(st["num_rejected_steps"]))
    res = {
        "status": "ok" if sol.result == diffrax.RESULTS.successful else f"failed: {sol.result}",
        "wall_ms": 1e3 * statistics.median(times),
        "times_ms": [1e3 * t for t in times],
        "first_call_ms": 1e3 * first,
        "compile_s": max(first - statistics.median(times), 0.0),
        "y_final": np.asarray(sol.ys[-1], dtype=np.float64).tolist(),
        "num_steps": num_steps, "num_accepted_steps": n_acc, "num_rejected_steps": n_rej,
        # NFE is counted (counted_solve), not derived: Tsit5 is FSAL, 6 new evaluations per attempted
        # step (accepted or rejected); nfe_startup = nfe - 6 * num_steps is what ran outside the steps
        # (1 in every workload here, although PIDController.init alone runs 2 when jitted by itself).
        "nfe_how": "counted by a host callback in the vector field (untimed no-grad solve)",
        "jax_version": jax.__version__, "diffrax_version": diffrax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if grad:
        leaves = jax.tree_util.tree_leaves(out)
        flat = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in leaves])
        res["grad_norm"] = float(np.linalg.norm(flat))
    res["nfe"], res["nfe_startup"] = nfe, nfe - 6 * num_steps
    res["f_eval_us"] = f_eval_time(jax, jnp, field, y0, params)
    return res


def counted_solve(jax, make_solve, field, y0, params):
    """The no-grad solve once more, untimed, with a host callback in the vector field that increments
    a counter on every evaluation the compiled program executes: returns (solution, NFE)."""
    counter = [0]

    def bump():
        counter[0] += 1

    def counted(y, p):
        jax.debug.callback(bump, ordered=True)
        return field(y, p)

    sol = jax.block_until_ready(jax.jit(lambda p: make_solve(counted)(y0, p))(params))
    jax.effects_barrier()
    return sol, counter[0]


def f_eval_time(jax, jnp, field, y0, params, n: int = 200) -> float:
    """Median time of one vector-field evaluation at this batch, inside one jitted loop of ``n``
    dependent evaluations (no dispatch cost per evaluation), in microseconds."""
    def body(i, y):
        return y + 1e-6 * field(y, params)

    loop = jax.jit(lambda y: jax.lax.fori_loop(0, n, body, y))
    jax.block_until_ready(loop(y0))
    times = []
    for _ in range(7):
        t = time.perf_counter()
        jax.block_until_ready(loop(y0))
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times) / n


if __name__ == "__main__":
    try:
        result = main(sys.argv)
    except Exception as e:  # noqa: BLE001
        result = {"status": f"failed: {type(e).__name__}: {e}"[:400]}
    print(json.dumps(result))
