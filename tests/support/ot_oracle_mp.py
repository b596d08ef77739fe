"""A 50-digit oracle for Sinkhorn and IPOT (mpmath): the iterations of tests/support/ot_oracle.py, one problem at a
time, on the exact values of float64 inputs, so float64 results can be measured against it however ill-conditioned the
problem (max|C|/eps up to 1/eps64). Positive marginals only (the float64 oracle handles zero mass)."""

import mpmath

DIGITS = 50


def _mp(values):
    return [mpmath.mpf(float(x)) for x in values]


def _lse(xs):
    top = max(xs)
    return top + mpmath.log(sum(mpmath.exp(x - top) for x in xs))


def sinkhorn(cost, a, b, *, eps, n_iters):
    """cost [n][m], a [n], b [m] (nested lists of floats, a, b > 0) -> plan [n][m] of mpf (POT's sinkhorn_log order)."""
    with mpmath.workdps(DIGITS):
        n, m = len(a), len(b)
        c = [_mp(row) for row in cost]
        log_a, log_b = [mpmath.log(x) for x in _mp(a)], [mpmath.log(x) for x in _mp(b)]
        e = mpmath.mpf(float(eps))
        f = [mpmath.mpf(0)] * n
        for _ in range(n_iters):
            g = [e * (log_b[j] - _lse([(f[i] - c[i][j]) / e for i in range(n)])) for j in range(m)]
            f = [e * (log_a[i] - _lse([(g[j] - c[i][j]) / e for j in range(m)])) for i in range(n)]
        return [[mpmath.exp((f[i] + g[j] - c[i][j]) / e) for j in range(m)] for i in range(n)]


def ipot(cost, a, b, *, beta, n_iters):
    """cost [n][m], a [n], b [m] (a, b > 0) -> plan [n][m] of mpf (HELO_SPEC §4.5 in logs, T = 1, sigma = 1/m)."""
    with mpmath.workdps(DIGITS):
        n, m = len(a), len(b)
        c = [_mp(row) for row in cost]
        log_a, log_b = [mpmath.log(x) for x in _mp(a)], [mpmath.log(x) for x in _mp(b)]
        be = mpmath.mpf(float(beta))
        log_t = [[mpmath.mpf(0)] * m for _ in range(n)]
        log_sigma = [-mpmath.log(m)] * m
        for _ in range(n_iters):
            log_q = [[-c[i][j] / be + log_t[i][j] for j in range(m)] for i in range(n)]
            log_delta = [log_a[i] - _lse([log_q[i][j] + log_sigma[j] for j in range(m)]) for i in range(n)]
            log_sigma = [log_b[j] - _lse([log_q[i][j] + log_delta[i] for i in range(n)]) for j in range(m)]
            log_t = [[log_delta[i] + log_q[i][j] + log_sigma[j] for j in range(m)] for i in range(n)]
        return [[mpmath.exp(x) for x in row] for row in log_t]


def relative_error(plan, oracle) -> float:
    """max |plan - oracle| / max |oracle| for a float64 plan [n, m] (tensor) against the mpf oracle, exactly."""
    with mpmath.workdps(DIGITS):
        size = max(abs(x) for row in oracle for x in row)
        err = max(
            abs(mpmath.mpf(float(p)) - o) for prow, orow in zip(plan.tolist(), oracle) for p, o in zip(prow, orow)
        )
        return float(err / size)
