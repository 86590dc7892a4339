"""Standardised L2 logistic regression solved the way numerical people would: in the row space, warm-started.

The logreg probe is `StandardScaler` then scikit-learn's `LogisticRegression` (lbfgs, L2, free intercept), whose
objective is mean weighted log-loss + ||W||^2 / (2 C sum(weights)). For an L2 penalty the coefficients lie in the
span of the (standardised) training rows A, so with A' = [A, sqrt(s) 1] = U diag(sqrt(lam)) V^T the problem on
Z = U diag(sqrt(lam)) (n x n) with the same penalty has the same optimum, W = V B, exactly: the extra constant column
only duplicates the free intercept, so its weight is zero at the optimum, and it makes the centred rows' kernel
(singular along the ones vector) positive definite. A fold of RetinaMNIST's default features is then a 960 x 960
problem instead of 960 x 4,128, and a fold is standardised and factorised once for every C, not once per C.

The same objective, gradient and stopping rule as scikit-learn (L-BFGS-B, gtol = tol, ftol = 64 eps, maxls 50), so a
fit here and `make_probe("logreg", C=C).fit(X, y)` predict the same to the solver's tolerance (tests pin it).
"""

import numpy as np
from joblib import delayed
from scipy import optimize
from scipy.linalg import eigh
from scipy.special import expit, softmax
from sklearn.utils.class_weight import compute_class_weight

TOL, MAX_ITER = 1e-4, 3000  # LogisticRegression's tol, and the probe's max_iter


def pays(rows, columns):
    """Whether factorising a fold pays: its eigendecomposition costs ~min(rows, columns)^3, the plain solver's
    iterations rows x columns each. Measured on the default recipe's 4,128 columns (2 cores): RetinaMNIST's 960-row
    folds 4.2x less CPU; PneumoniaMNIST balanced's 2,152-row folds 2x more (binary: one cheap column per iteration)."""
    return min(rows, columns) <= 0.35 * max(rows, columns)


def scale_stats(X, rows=None, chunk=8192):
    """Column means and StandardScaler's scale (std, ddof 0; 1 where constant) of X[rows], in float64, by chunks:
    no standardised copy of a large matrix is ever made."""
    n = len(X) if rows is None else len(rows)

    def parts():
        for start in range(0, n, chunk):
            yield X[start:start + chunk] if rows is None else X[rows[start:start + chunk]]

    mean = sum(part.sum(axis=0, dtype=np.float64) for part in parts()) / n
    var = sum(np.square(part - mean.astype(X.dtype), dtype=np.float64).sum(axis=0) for part in parts()) / n
    scale = np.sqrt(var)
    scale[var < 10 * np.finfo(np.float64).eps * np.maximum(mean**2, 1)] = 1.0  # as StandardScaler treats constant columns
    return mean, scale, var


def sample_weights(y, class_weight):
    """Per-row weights as LogisticRegression derives them from class_weight (None: ones)."""
    if class_weight is None:
        return np.ones(len(y))
    classes = np.unique(y)
    weights = compute_class_weight(class_weight, classes=classes, y=y)
    return weights[np.searchsorted(classes, y)]


class Basis:
    """One training set in coordinates where its standardised rows A have orthogonal columns: `Z` (n x r), and
    `held`, the same coordinates of the rows given as `held` (None when not given).

    With fewer rows than columns it is the row space (eigenvectors of A'A'^T, A' = [A, sqrt(s) 1]); otherwise the
    column space (eigenvectors of A^T A). Either way the logistic problem on Z is the one on A, exactly.

    >>> basis = Basis(X, train_rows, held_rows)
    >>> W, _ = solve(basis.Z, *targets(y[train_rows], classes)[::-1][::-1], ...)
    """

    def __init__(self, X, train, held=None, dtype=None, keep_rows=False):
        # float32 features stay float32 (half the memory and time); float64 ones stay exact
        dtype = self.dtype = np.dtype(dtype or (X.dtype if X.dtype in (np.float32, np.float64) else np.float64))
        A = X[train].astype(dtype)  # the fold's one copy, standardised in place
        self.mean, self.scale, self.var = scale_stats(A)
        mean, scale = self.mean.astype(dtype), self.scale.astype(dtype)
        A -= mean
        A /= scale
        B = None if held is None else (X[held].astype(dtype, copy=False) - mean) / scale
        cutoff = 1e-10 if dtype == np.float64 else 1e-6  # relative: the rank lost to duplicate rows or columns
        self.rows = len(A) <= A.shape[1]
        if self.rows:
            K = A @ A.T
            self.shift = float(np.mean(np.diag(K))) or 1.0  # s: the constant column's square, on the kernel's scale
            lam, U = eigh(K + K.dtype.type(self.shift), driver="evd", overwrite_a=True)  # float32: 1.6x faster (measured)
            lam, U = lam.astype(np.float64), U.astype(np.float64)
            keep = lam > lam[-1] * cutoff
            root = np.sqrt(lam[keep])
            self.Z = U[:, keep] * root
            self._to_rows = U[:, keep] / root  # B' A'^T times this gives B's coordinates; A'^T times it maps W back
            self.held = None if B is None else ((B @ A.T).astype(np.float64) + self.shift) @ self._to_rows
            self._A = A if keep_rows else None
        else:
            lam, V = eigh(A.T @ A, driver="evd", overwrite_a=True)
            lam, V = lam.astype(np.float64), V.astype(np.float64)
            keep = lam > lam[-1] * cutoff
            self._V = V[:, keep]
            self.Z = (A @ self._V.astype(dtype)).astype(np.float64)
            self.held = None if B is None else (B @ self._V.astype(dtype)).astype(np.float64)

    def coef(self, W):
        """(coef (K x D) on the standardised columns, intercept (K,)) of a solution W ((r+1) x K) on Z."""
        if not self.rows:
            return (self._V @ W[:-1]).T, W[-1].copy()
        alpha = self._to_rows @ W[:-1]  # the weights over the rows: W on A' is A'^T alpha
        coef = (self._A.T.astype(np.float64) @ alpha).T
        return coef, W[-1] + self.shift * alpha.sum(axis=0)  # the constant column's weight joins the intercept


def targets(y, classes):
    """(Y, binary): Y is (n, 1) of 0/1 for two classes (LogisticRegression's one coefficient row), else one-hot."""
    if len(classes) == 2:
        return (y == classes[1]).astype(np.float64)[:, None], True
    return (y[:, None] == classes[None, :]).astype(np.float64), False


def _loss(M, Y, w, binary):
    """(weighted mean log-loss, its gradient in the margins M) as scikit-learn's Half{Binomial,Multinomial}Loss."""
    if binary:
        loss = np.logaddexp(0, M) - Y * M
        G = expit(M) - Y
    else:  # logsumexp by hand: scipy's checks cost more than the arithmetic at this size
        top = M.max(axis=1, keepdims=True)
        lse = top + np.log(np.exp(M - top).sum(axis=1, keepdims=True))
        loss = lse - (Y * M).sum(axis=1, keepdims=True)
        G = np.exp(M - lse) - Y
    return float(w @ loss.sum(axis=1)), G * w[:, None]


def _minimize(objective, start, root, tol, max_iter):
    """L-BFGS-B with scikit-learn's options, stopped once the gradient (rescaled by `root`) is below tol everywhere."""
    last = {}

    def recorded(flat):
        value, grad = objective(flat)
        last["grad"] = grad
        return value, grad

    def converged(intermediate_result):
        if np.abs(last["grad"] * root).max() <= tol:
            raise StopIteration

    result = optimize.minimize(recorded, start, method="L-BFGS-B", jac=True, callback=converged,
                               options={"maxiter": max_iter, "maxls": 50, "gtol": 0.0, "ftol": 64 * np.finfo(float).eps})
    return result.x, int(result.nit)


def solve(Z, Y, weights, C, binary, W0=None, tol=TOL, max_iter=MAX_ITER, dtype=np.float64):
    """The minimiser W ((r+1) x K, intercept last) of scikit-learn's logistic objective on features Z; (W, n_iter).

    L-BFGS runs on Z's columns rescaled by the objective's curvature at p = 1/2 (a diagonal preconditioner, near
    exact where Z's columns are orthogonal, as a Basis's are): on a RetinaMNIST-shaped fold 16-32 iterations against
    82-224 on Z itself. It stops as scikit-learn does, once every gradient component in Z's own coordinates is
    below `tol`. `dtype` float32 halves the cost of its two products per iteration (the rest stays float64).
    """
    r, K = Z.shape[1], Y.shape[1]
    w = weights / weights.sum()
    strength = 1.0 / (C * weights.sum())
    curvature = np.append(0.25 * (w @ np.square(Z)) + strength, 0.25)  # the Hessian's diagonal at p = 1/2; intercept last
    root = np.sqrt(curvature)[:, None]
    Zp = (Z / root[:-1, 0]).astype(dtype)
    penalty = (strength / curvature[:-1])[:, None]

    def objective(flat):
        V = flat.reshape(r + 1, K)
        value, G = _loss((Zp @ V[:-1].astype(dtype)).astype(np.float64) + V[-1] / root[-1], Y, w, binary)
        grad = np.vstack([(Zp.T @ G.astype(dtype)).astype(np.float64) + penalty * V[:-1], G.sum(axis=0) / root[-1]])
        return value + 0.5 * float((penalty * np.square(V[:-1])).sum()), grad.ravel()

    start = np.zeros((r + 1, K)) if W0 is None else W0 * root
    V, n_iter = _minimize(objective, start.ravel(), root.repeat(K, axis=1).ravel(), tol, max_iter)
    return V.reshape(r + 1, K) / root, n_iter


def solve_columns(X, Y, weights, C, binary, mean, scale, W0=None, tol=TOL, max_iter=MAX_ITER):
    """The same objective on all of X's standardised columns, with the standardisation folded into the weights, so X
    (any size, float32) is read in place and never copied; (coef (K x D), intercept (K,), n_iter). Rows of weight 0
    are left out (a fold without copying it).
    """
    D, K = X.shape[1], Y.shape[1]
    w = weights / weights.sum()
    strength = 1.0 / (C * weights.sum())
    inv = (1.0 / scale)[:, None]

    def objective(flat):
        W = flat.reshape(D + 1, K)
        V = W[:-1] * inv  # x @ V - mean @ V == ((x - mean) / scale) @ W
        M = (X @ V.astype(X.dtype)).astype(np.float64) + (W[-1] - mean @ V)
        value, G = _loss(M, Y, w, binary)
        XtG = (X.T @ G.astype(X.dtype)).astype(np.float64) - np.outer(mean, G.sum(axis=0))
        grad = np.vstack([XtG * inv + strength * W[:-1], G.sum(axis=0)])
        return value + 0.5 * strength * float(np.square(W[:-1]).sum()), grad.ravel()

    start = np.zeros((D + 1) * K) if W0 is None else W0.ravel()
    W, n_iter = _minimize(objective, start, 1.0, tol, max_iter)
    W = W.reshape(D + 1, K)
    return W[:-1].T, W[-1], n_iter


def probabilities(M, binary):
    """predict_proba's columns from margins, as LogisticRegression computes them."""
    if binary:
        p = expit(M[:, 0])
        return np.column_stack([1 - p, p])
    return softmax(M, axis=1)


def margins(X, coef, intercept, mean, scale, rows=None, chunk=65536):
    """((X[rows] - mean) / scale) @ coef.T + intercept without standardising (or, by chunks, copying) X; (n, K)."""
    V = (coef / scale).T
    offset = intercept - mean @ V
    n = len(X) if rows is None else len(rows)
    parts = (X[i:i + chunk] if rows is None else X[rows[i:i + chunk]] for i in range(0, n, chunk))
    return np.vstack([(part @ V.astype(X.dtype)).astype(np.float64) + offset for part in parts])


def solve_fold(basis, y, class_weight, C, W0=None):
    """One CV fold at one C: (W, the held-out rows' probabilities in the columns of the fold's classes)."""
    Y, binary = targets(y, np.unique(y))
    W, _ = solve(basis.Z, Y, sample_weights(y, class_weight), C, binary, W0, dtype=basis.dtype)
    return W, probabilities(basis.held @ W[:-1] + W[-1], binary)


class FoldPath:
    """Every CV fold standardised and factorised once (`Basis`), then solved at each C asked for, warm-started from
    the nearest C already solved. `run` is a joblib Parallel: threads here, or tasks on a Ray cluster.

    >>> path = FoldPath(X, y, splits, None, Parallel(n_jobs=2, prefer="threads"))
    >>> held_probabilities = path(0.01)   # one array per split
    """

    def __init__(self, X, y, splits, class_weight, run):
        self.y, self.splits, self.class_weight, self.run = y, splits, class_weight, run
        self.bases = run(delayed(Basis)(X, train, held) for train, held in splits)
        self.solved = {}

    def __call__(self, C):
        near = min(self.solved, key=lambda c: abs(np.log(c / C)), default=None)
        starts = self.solved[near] if near is not None else [None] * len(self.splits)
        out = self.run(delayed(solve_fold)(basis, self.y[train], self.class_weight, C, W0)
                       for basis, (train, _), W0 in zip(self.bases, self.splits, starts))
        self.solved[C] = [W for W, _ in out]
        return [p for _, p in out]


def fit(X, y, C, class_weight=None, start_rows=None, tol=TOL):
    """Standardised logistic regression on all of X: (mean, scale, var, coef, intercept, n_iter).

    Without `start_rows`, in X's row (or column) space. With them (a subsample of a large X), solved there first,
    then on all of X's columns in place, warm-started from that solution.
    """
    classes = np.unique(y)
    Y, binary = targets(y, classes)
    weights = sample_weights(y, class_weight)
    if start_rows is None:
        basis = Basis(X, np.arange(len(X)), keep_rows=True)
        W, n_iter = solve(basis.Z, Y, weights, C, binary, tol=tol, dtype=basis.dtype)
        return (basis.mean, basis.scale, basis.var, *basis.coef(W), n_iter)
    mean, scale, var = scale_stats(X)
    sub_mean, sub_scale, _, coef, intercept, _ = fit(X[start_rows], y[start_rows], C, class_weight, tol=tol)
    # The subsample's solution, re-expressed on the whole data's standardisation
    coef = coef * scale / sub_scale
    intercept = intercept + coef @ ((mean - sub_mean) / scale)
    coef, intercept, n_iter = solve_columns(X, Y, weights, C, binary, mean, scale, np.vstack([coef.T, intercept]), tol)
    return mean, scale, var, coef, intercept, n_iter
