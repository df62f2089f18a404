"""Curvature of the loss: Hessian-vector products, top eigenvalues, trace, spectral density.

Everything is matrix-free: the Hessian ``H = ∇²L(w)`` over the model's trainable parameters is
only ever applied to vectors. ``L`` is the loss over ``data`` (a batch, or the size-weighted
mean over the batches of a DataLoader), with the layers in a stated ``mode``:

* ``"eval"`` (default): BatchNorm uses its running statistics, dropout is off;
* ``"train"``: BatchNorm normalizes with each batch's statistics and its running statistics
  are left untouched (as with ``optim.bn_stats_frozen``); dropout is on (so ``H`` is random).

Hessian-vector products (``hvp=``):

* ``"autograd"`` (default): double backward. On a single batch the gradient graph is built
  once and every product is one extra backward pass through it (about 2 passes' cost);
  on a DataLoader each product recomputes the gradient graph batch by batch.
* ``"func"``: ``torch.func.jvp`` of ``torch.func.grad`` (forward-over-reverse).

Algorithms: Lanczos with full reorthogonalization for the top-``k`` eigenpairs (default; it
reaches a given accuracy with far fewer products than power iteration because it keeps the
whole Krylov space instead of its last vector), power iteration with deflation (PyHessian's
method, for comparison), Hutchinson's trace estimator with Rademacher vectors, and stochastic
Lanczos quadrature (Ghorbani et al., 2019) for the eigenvalue density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._common import (
    batch_size,
    check_mode,
    is_batch,
    iter_batches,
    model_device,
    model_mode,
    progress_bar,
    trainable_named_parameters,
    unflatten,
)
from .directions import Direction

HVP_METHODS = ("autograd", "func")


class HessianOperator:
    """The loss Hessian of ``model`` on ``data`` as a matrix-free linear operator.

    Args:
        model: any ``nn.Module``; its trainable parameters are the Hessian's variables.
        data: a batch ``(inputs, targets)`` or an iterable of batches.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (batch mean).
        hvp: ``"autograd"`` (double backward) or ``"func"`` (``torch.func``).

    Use inside ``model_mode`` (the public functions do this); :meth:`matvec` maps a flat
    vector of length :attr:`n` (parameters concatenated in module order) to ``H v``.
    :attr:`count` counts the products.
    """

    def __init__(self, model: nn.Module, data, loss_fn, *, hvp: str = "autograd"):
        if hvp not in HVP_METHODS:
            raise ValueError(f"Invalid hvp: {hvp!r} (allowed: 'autograd' or 'func')")
        named = trainable_named_parameters(model)
        if isinstance(data, (list, tuple)) and len(data) == 1 and is_batch(data[0]):
            data = data[0]  # a one-batch list: take the cached-graph path
        self.model, self.data, self.loss_fn, self.hvp = model, data, loss_fn, hvp
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.n = sum(p.numel() for p in self.params)
        self.device = model_device(model)
        self.dtype = self.params[0].dtype
        self.count = 0
        self._grads = None
        self._single = is_batch(data)

    def _batches(self):
        return iter_batches(self.data, self.device)

    def _cached_grads(self):
        # One batch: build the gradient graph once; each product is a backward through it.
        if self._grads is None:
            (x, y), = list(self._batches())
            loss = self.loss_fn(self.model(x), y)
            self._grads = torch.autograd.grad(loss, self.params, create_graph=True)
        return self._grads

    def _hvp_autograd(self, vs: list[Tensor]) -> list[Tensor]:
        if self._single:
            return list(torch.autograd.grad(self._cached_grads(), self.params, vs, retain_graph=True))
        total, acc = 0, None
        for x, y in self._batches():
            nb = batch_size(x)
            loss = self.loss_fn(self.model(x), y)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            hv = torch.autograd.grad(grads, self.params, vs)
            acc = [h * nb for h in hv] if acc is None else [a + h * nb for a, h in zip(acc, hv)]
            total += nb
        return [a / total for a in acc]

    def _hvp_func(self, vs: list[Tensor]) -> list[Tensor]:
        from torch.func import functional_call, grad, jvp

        primals = tuple(p.detach() for p in self.params)
        total, acc = 0, None
        for x, y in self._batches():
            def loss_of(ps, x=x, y=y):
                return self.loss_fn(functional_call(self.model, dict(zip(self.names, ps)), (x,)), y)

            _, hv = jvp(grad(loss_of), (primals,), (tuple(vs),))
            nb = batch_size(x)
            if self._single:
                return list(hv)
            acc = [h * nb for h in hv] if acc is None else [a + h * nb for a, h in zip(acc, hv)]
            total += nb
        return [a / total for a in acc]

    def apply(self, vs: list[Tensor]) -> list[Tensor]:
        """``H v`` for ``v`` given as one tensor per parameter (detached results)."""
        self.count += 1
        vs = [v.to(p.device, p.dtype) for v, p in zip(vs, self.params)]
        hv = self._hvp_autograd(vs) if self.hvp == "autograd" else self._hvp_func(vs)
        return [h.detach() for h in hv]

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat vector ``v`` of length :attr:`n` (returned in ``v``'s dtype)."""
        hv = self.apply(unflatten(v.to(self.dtype), self.params))
        return torch.cat([h.reshape(-1) for h in hv]).to(v.dtype)

    def to_direction(self, flat: Tensor) -> Direction:
        return Direction({n: t.to(p.dtype).clone() for n, t, p in
                          zip(self.names, unflatten(flat, self.params), self.params)})


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > n:
        raise ValueError(f"k={k} exceeds the number of trainable parameters ({n}); ask for at most {n}")
    return k


def _random_unit(n: int, gen: torch.Generator, device, rademacher: bool = False) -> Tensor:
    if rademacher:
        v = torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1
    else:
        v = torch.randn(n, generator=gen, dtype=torch.float64)
    v = v.to(device)
    return v / torch.linalg.vector_norm(v)


def lanczos(matvec, n: int, *, k: int = 1, tol: float = 1e-3, max_iter: int = 100, v0: Tensor,
            restart: bool = True, gen: torch.Generator | None = None, on_step=None):
    """Lanczos with full reorthogonalization on a symmetric operator.

    Stops when every top-``k`` Ritz value ``θ_i`` has residual ``r_i = β_j |s_{j,i}| ≤ tol ·
    max(|θ_1|, 1e-12)`` (``tol=0``: run ``max_iter`` steps), or the Krylov space reaches ``n``.
    ``r_i = ‖H y_i − θ_i y_i‖`` for the Ritz vector ``y_i``, so an eigenvalue lies within ``r_i``
    of ``θ_i``: a bound, unlike a gap-based refinement ``r²/gap`` whose gap is measured between
    Ritz values and so misleads exactly when the start vector barely sees the top eigenvector.
    With ``restart``, an exhausted Krylov space (an invariant subspace) continues from a fresh
    random vector orthogonal to the basis, so repeated eigenvalues are found too.

    The basis is kept in ``v0``'s dtype and device and grows with the iterations (float32
    models need no float64 copy; the tridiagonal ``T`` is float64 either way).

    Returns:
        ``(alphas [m], betas [m-1], Q [m, n], converged)``: the tridiagonal ``T`` (float64) and the basis.
    """
    device, dtype = v0.device, v0.dtype
    cap = min(max_iter, n)
    Q = torch.empty(min(cap, 16), n, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    q, q_prev, beta_prev = v0, None, 0.0
    converged = False
    for j in range(cap):
        if j == Q.shape[0]:  # grow by doubling: a few copies instead of a max_iter × n block up front
            Q = torch.cat([Q, torch.empty(min(cap, 2 * j) - j, n, dtype=dtype, device=device)])
        Q[j] = q
        w = matvec(q)
        a = float(torch.dot(w, q))
        w = w - a * q
        if q_prev is not None:
            w.sub_(q_prev, alpha=beta_prev)
        basis = Q[: j + 1]
        # Full reorthogonalization; a second pass only when the first removed most of w
        # (Kahan–Parlett: "twice is enough").
        before = torch.linalg.vector_norm(w)
        w = torch.addmv(w, basis.T, basis @ w, alpha=-1.0)
        b = float(torch.linalg.vector_norm(w))
        if b < 0.7 * float(before):
            w = torch.addmv(w, basis.T, basis @ w, alpha=-1.0)
            b = float(torch.linalg.vector_norm(w))
        alphas.append(a)
        if on_step is not None:
            on_step()
        if j + 1 == cap:
            break
        scale = max(abs(x) for x in alphas) or 1.0
        exhausted = b <= 1e-10 * scale
        if tol > 0 and j + 1 >= k and not exhausted:
            theta, s = _tridiag_eigh(alphas, betas)
            top = torch.argsort(theta, descending=True)[:k]
            resid = b * s[-1, top].abs()
            if bool((resid <= tol * max(float(theta[top].abs().max()), 1e-12)).all()):
                converged = True
                break
        if exhausted:
            if not restart:
                break
            # Invariant subspace: continue from a fresh direction orthogonal to the basis.
            w = torch.randn(n, generator=gen, dtype=torch.float64).to(device, dtype)
            for _ in range(2):
                w = torch.addmv(w, basis.T, basis @ w, alpha=-1.0)
            b_norm = float(torch.linalg.vector_norm(w))
            q_prev, q, beta_prev = q, w / b_norm, 0.0
            betas.append(0.0)
            continue
        betas.append(b)
        q_prev, q, beta_prev = q, w / b, b
    if tol > 0 and not converged and len(alphas) == n:
        converged = True  # the full space: the Ritz values are the eigenvalues
    m = len(alphas)
    return torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas[: m - 1], dtype=torch.float64), Q[:m], converged


def _tridiag_eigh(alphas, betas):
    a = torch.as_tensor(alphas, dtype=torch.float64)
    b = torch.as_tensor(betas[: len(alphas) - 1], dtype=torch.float64)
    T = torch.diag(a)
    if len(b):
        T = T + torch.diag(b, 1) + torch.diag(b, -1)
    return torch.linalg.eigh(T)


@dataclass
class HessianEigen:
    """Top eigenpairs of the loss Hessian.

    Attributes:
        values: ``[k]`` eigenvalues, largest first (float64; units of loss / parameter²).
        vectors: ``k`` unit-norm :class:`Direction` eigenvectors (usable as landscape directions).
        hvp_count: Hessian-vector products spent.
        converged: whether the tolerance was met before ``max_iter``.
        method: ``"lanczos"`` or ``"power"``.
    """

    values: Tensor
    vectors: list[Direction]
    hvp_count: int
    converged: bool
    method: str

    def __repr__(self) -> str:
        vals = ", ".join(f"{float(v):.5g}" for v in self.values)
        return f"HessianEigen([{vals}], {self.hvp_count} HVPs, converged={self.converged})"


def _power_iteration(op: HessianOperator, k: int, tol: float, max_iter: int, gen, on_step):
    """PyHessian-style power iteration with deflation (relative tolerance on the eigenvalue)."""
    values: list[float] = []
    vectors: list[Tensor] = []
    converged = True
    for _ in range(k):
        v = _random_unit(op.n, gen, op.device)
        lam = None
        done = False
        for _ in range(max_iter):
            for u in vectors:  # keep v out of the found eigenspaces
                v = v - torch.dot(u, v) * u
            v = v / torch.linalg.vector_norm(v)
            hv = op.matvec(v)
            for u, lu in zip(vectors, values):
                hv = hv - lu * torch.dot(u, v) * u
            on_step()
            new = float(torch.dot(hv, v))
            norm = torch.linalg.vector_norm(hv)
            if lam is not None and abs(new - lam) / (abs(lam) + 1e-6) < tol:
                lam, done = new, True
                break
            lam = new
            if norm == 0:
                done = True
                break
            v = hv / norm
        converged &= done
        values.append(lam)
        vectors.append(v)
    order = sorted(range(k), key=lambda i: -values[i])
    return [values[i] for i in order], [vectors[i] for i in order], converged


def hessian_eigenvalues(model: nn.Module, data, loss_fn, k: int = 1, *, method: str = "lanczos",
                        tol: float = 1e-3, max_iter: int | None = None, mode: str = "eval",
                        hvp: str = "autograd", seed: int = 0, progress: bool = True) -> HessianEigen:
    """The ``k`` largest Hessian eigenvalues and their eigenvectors.

    Args:
        model: any ``nn.Module`` (its parameters and flags are left as they were).
        data: a batch ``(inputs, targets)`` or an iterable of batches.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (batch mean).
        k: how many eigenpairs; at most the number of trainable parameters.
        method: ``"lanczos"`` (default) or ``"power"`` (power iteration with deflation).
        tol: relative accuracy. Lanczos: each eigenvalue's residual bound ≤ ``tol · |λ_1|``
            (see :func:`lanczos`); power: relative change of the eigenvalue between steps.
        max_iter: Hessian-vector products at most (Lanczos) or per eigenvalue (power);
            default ``min(n, max(100, 10·k))`` and 100.
        mode: ``"eval"`` or ``"train"`` (module docstring).
        hvp: ``"autograd"`` or ``"func"``.
        seed: seeds the start vector.
    Returns:
        :class:`HessianEigen`.

    Example:
        >>> eig = hessian_eigenvalues(model, (x, y), F.cross_entropy, k=2)
        >>> eig.values          # tensor([λ₁, λ₂])
    """
    if method not in ("lanczos", "power"):
        raise ValueError(f"Invalid method: {method!r} (allowed: 'lanczos' or 'power')")
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number ≥ 0, got {tol}")
    check_mode(mode)
    op = HessianOperator(model, data, loss_fn, hvp=hvp)
    k = _check_k(k, op.n)
    if max_iter is None:
        max_iter = min(op.n, max(100, 10 * k)) if method == "lanczos" else 100
    if max_iter < k and method == "lanczos":
        raise ValueError(f"max_iter={max_iter} must be at least k={k}")
    gen = torch.Generator().manual_seed(seed)
    total = max_iter if method == "lanczos" else max_iter * k
    with model_mode(model, mode), progress_bar(total, "hessian eigenvalues", progress) as bar:
        if method == "lanczos":
            v0 = _random_unit(op.n, gen, op.device).to(op.dtype)
            alphas, betas, Q, converged = lanczos(op.matvec, op.n, k=k, tol=tol, max_iter=max_iter, v0=v0,
                                                  gen=gen, on_step=lambda: bar.update(1))
            theta, s = _tridiag_eigh(alphas.tolist(), betas.tolist())
            top = torch.argsort(theta, descending=True)[:k]
            values = theta[top]
            vecs = [Q.T @ s[:, i].to(Q.dtype) for i in top]
        else:
            vals, vecs, converged = _power_iteration(op, k, tol, max_iter, gen, lambda: bar.update(1))
            values = torch.tensor(vals, dtype=torch.float64)
    vectors = [op.to_direction(v / torch.linalg.vector_norm(v)) for v in vecs]
    return HessianEigen(values.cpu(), vectors, op.count, converged, method)


def eigen_directions(model: nn.Module, data, loss_fn, k: int = 2, **kwargs) -> list[Direction]:
    """The top-``k`` Hessian eigenvectors (unit norm) as directions.

    Keyword arguments go to :func:`hessian_eigenvalues` (``mode``, ``tol``, ``seed``, ...).
    For a plane: ``Plane(*eigen_directions(m, b, f, 2))``.
    """
    return list(hessian_eigenvalues(model, data, loss_fn, k=k, **kwargs).vectors)


def hessian_top_eigenvalue(model: nn.Module, data, loss_fn, *, iters: int = 100, tol: float = 1e-3,
                           mode: str = "eval", **kwargs) -> float:
    """The largest Hessian eigenvalue as a float, with at most ``iters`` Hessian-vector products.

    What the trainer logs every ``hessian_every`` epochs. Lanczos (tolerance ``tol``), so a
    small budget such as ``iters=20`` is far more accurate than 20 power iterations.
    Other keyword arguments as in :func:`hessian_eigenvalues`.

    Example:
        >>> hessian_top_eigenvalue(model, [(x, y)], F.cross_entropy, iters=20)
        12.7...
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    kwargs.setdefault("progress", False)
    op_n = sum(p.numel() for _, p in trainable_named_parameters(model))
    return float(hessian_eigenvalues(model, data, loss_fn, k=1, tol=tol, max_iter=min(iters, op_n), mode=mode,
                                     **kwargs).values[0])


def hvp(model: nn.Module, data, loss_fn, vector: Direction, *, mode: str = "eval",
        method: str = "autograd") -> Direction:
    """One Hessian-vector product ``H v`` with ``v`` a :class:`Direction` over the trainable parameters.

    Example:
        >>> hv = hvp(model, (x, y), F.cross_entropy, random_direction(model, norm=None, include_1d=True))
    """
    check_mode(mode)
    op = HessianOperator(model, data, loss_fn, hvp=method)
    if not isinstance(vector, Direction) or list(vector) != op.names:
        raise ValueError("vector must be a Direction over exactly the model's trainable parameters, in order")
    for name, p in zip(op.names, op.params):
        if vector[name].shape != p.shape:
            raise ValueError(f"vector tensor {name!r} has shape {tuple(vector[name].shape)}, "
                             f"the parameter {tuple(p.shape)}")
    with model_mode(model, mode):
        hv = op.apply([vector[n] for n in op.names])
    return Direction(dict(zip(op.names, hv)))


@dataclass
class TraceEstimate:
    """Hutchinson's estimate of ``tr(H)``: ``value`` ± ``std_error`` from ``samples`` (one per vector)."""

    value: float
    std_error: float
    samples: Tensor

    def __repr__(self) -> str:
        return f"TraceEstimate({self.value:.5g} ± {self.std_error:.2g}, {len(self.samples)} samples)"


def hessian_trace(model: nn.Module, data, loss_fn, *, n_samples: int = 64, mode: str = "eval",
                  hvp: str = "autograd", seed: int = 0, progress: bool = True) -> TraceEstimate:
    """Hutchinson's trace estimator ``tr(H) ≈ mean_i vᵢᵀ H vᵢ`` with Rademacher ``vᵢ`` (±1 entries).

    Unbiased; exact for a diagonal ``H``. Costs ``n_samples`` Hessian-vector products.

    Example:
        >>> hessian_trace(model, (x, y), F.cross_entropy, n_samples=100).value
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    check_mode(mode)
    op = HessianOperator(model, data, loss_fn, hvp=hvp)
    gen = torch.Generator().manual_seed(seed)
    samples = []
    with model_mode(model, mode), progress_bar(n_samples, "hessian trace", progress) as bar:
        for _ in range(n_samples):
            v = (torch.randint(0, 2, (op.n,), generator=gen) * 2 - 1).to(op.device, torch.float64)
            samples.append(float(torch.dot(op.matvec(v), v)))
            bar.update(1)
    s = torch.tensor(samples, dtype=torch.float64)
    err = float(s.std() / math.sqrt(len(s))) if len(s) > 1 else math.nan
    return TraceEstimate(float(s.mean()), err, s)


@dataclass
class SpectralDensity:
    """Eigenvalue density of the Hessian from stochastic Lanczos quadrature.

    Attributes:
        grid: ``[G]`` eigenvalue axis (loss / parameter²).
        density: ``[G]`` Gaussian-broadened density (integrates to ≈ 1 over ``grid``).
        nodes: ``[V, m]`` Ritz values per random vector (quadrature nodes).
        weights: ``[V, m]`` quadrature weights per vector (each row sums to 1).
        sigma: the Gaussian broadening width.
    """

    grid: Tensor
    density: Tensor
    nodes: Tensor
    weights: Tensor
    sigma: float


def spectral_density(model: nn.Module, data, loss_fn, *, steps: int = 64, n_vectors: int = 1,
                     grid_points: int = 1000, sigma: float | None = None, mode: str = "eval",
                     hvp: str = "autograd", seed: int = 0, progress: bool = True) -> SpectralDensity:
    """The Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al., 2019).

    For each of ``n_vectors`` random unit vectors ``v``, ``steps`` Lanczos iterations give a
    tridiagonal ``T = S Θ Sᵀ``; the nodes ``θ_j`` with weights ``S_{0j}²`` are a Gauss quadrature
    of ``vᵀ f(H) v``, so ``Σ_j S_{0j}² N(t; θ_j, σ²)`` estimates the density
    ``(1/n) Σ_i N(t; λ_i, σ²)``. The density is the mean over vectors.

    Args:
        steps: Lanczos iterations per vector (capped at the parameter count).
        n_vectors: random start vectors (each costs ``steps`` Hessian-vector products).
        grid_points: points on the eigenvalue axis.
        sigma: broadening width; default 1% of the spread of the nodes.
    """
    for name, val in (("steps", steps), ("n_vectors", n_vectors), ("grid_points", grid_points)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if sigma is not None and not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    check_mode(mode)
    op = HessianOperator(model, data, loss_fn, hvp=hvp)
    gen = torch.Generator().manual_seed(seed)
    steps = min(steps, op.n)
    all_nodes, all_weights = [], []
    with model_mode(model, mode), progress_bar(steps * n_vectors, "spectral density", progress) as bar:
        for _ in range(n_vectors):
            v0 = _random_unit(op.n, gen, op.device).to(op.dtype)
            alphas, betas, _, _ = lanczos(op.matvec, op.n, k=1, tol=0.0, max_iter=steps, v0=v0, restart=False,
                                          gen=gen, on_step=lambda: bar.update(1))
            theta, s = _tridiag_eigh(alphas.tolist(), betas.tolist())
            all_nodes.append(theta)
            all_weights.append(s[0] ** 2)
    width = max(len(t) for t in all_nodes)
    nodes = torch.full((n_vectors, width), math.nan, dtype=torch.float64)
    weights = torch.zeros((n_vectors, width), dtype=torch.float64)
    for i, (t, w) in enumerate(zip(all_nodes, all_weights)):
        nodes[i, : len(t)] = t
        weights[i, : len(w)] = w
    finite = nodes[torch.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    spread = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = float(sigma) if sigma is not None else 0.01 * spread
    pad = 0.05 * spread + 5 * sigma
    grid = torch.linspace(lo - pad, hi + pad, grid_points, dtype=torch.float64)
    safe_nodes = torch.nan_to_num(nodes, nan=0.0)
    gauss = torch.exp(-0.5 * ((grid[None, None, :] - safe_nodes[:, :, None]) / sigma) ** 2) / (
        sigma * math.sqrt(2 * math.pi))
    density = (weights[:, :, None] * gauss).sum(1).mean(0)
    return SpectralDensity(grid, density, nodes, weights, sigma)
