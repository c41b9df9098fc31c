"""The compiled per-key recurrence behind :mod:`training.features` (one pass over a batch, in arrival order).

For each event and each numeric field it reads the key's baseline *before* the event (no leakage of the
event into its own baseline), writes the features, then lets the value into the baseline unless it is
protected against. The robust baseline keeps the key's last ``N`` accepted values twice: in arrival order
(to expire the oldest, by count or age) and sorted (so the median is an index and the MAD a 16-step merge
outward from it, instead of two selections per event).
"""

from __future__ import annotations

import numba
import numpy as np

# per (key, field) scalar state, columns of ``fstate``
EWM_MEAN, EWM_VAR, EWM_N, LAST, RUN, SAME, HAS_LAST, RING_HEAD, RING_N, RES = range(10)
N_FSTATE = 10
# per key scalar state, columns of ``kstate``
K_COUNT, K_LAST_T, K_EWM_DT, K_TRING_HEAD, K_TRING_N, K_SH_HEAD, K_SH_N = range(7)
N_KSTATE = 7
# output columns per field, in ``fout``
O_LEVEL, O_Z, O_RZ, O_DELTA, O_REPEAT, O_MISSING = range(6)
N_FOUT = 6
# output columns per key, in ``kout``
O_COUNT_W, O_DT, O_DT_RATIO, O_WARM = range(4)
N_KOUT = 4

#: a robust z-score is only taken once the ring holds this many values; before, every value is accepted
MIN_FILL = 4
_MAD_TO_SD = 1.4826


@numba.njit(cache=True, nogil=True)
def _sorted_remove(sv, n, x):  # pragma: no cover - compiled
    """Remove one occurrence of ``x`` from the sorted prefix ``sv[:n]``."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if sv[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    for j in range(lo, n - 1):
        sv[j] = sv[j + 1]


@numba.njit(cache=True, nogil=True)
def _sorted_insert(sv, n, x):  # pragma: no cover - compiled
    j = n
    while j > 0 and sv[j - 1] > x:
        sv[j] = sv[j - 1]
        j -= 1
    sv[j] = x


@numba.njit(cache=True, nogil=True)
def _median_mad(sv, n):  # pragma: no cover - compiled
    """Median and MAD of the sorted prefix ``sv[:n]`` (n >= 1)."""
    h = n // 2
    med = sv[h] if n % 2 == 1 else 0.5 * (sv[h - 1] + sv[h])
    # sorted, the deviations |v - med| are a merge of two runs that grow outward from the median
    lo = (n - 1) // 2
    hi = lo + 1
    d_a = 0.0
    d_b = 0.0
    for idx in range(n // 2 + 1):
        dl = med - sv[lo] if lo >= 0 else np.inf
        dr = sv[hi] - med if hi < n else np.inf
        if dl <= dr:
            d = dl
            lo -= 1
        else:
            d = dr
            hi += 1
        if idx == (n - 1) // 2:
            d_a = d
        if idx == n // 2:
            d_b = d
    return med, 0.5 * (d_a + d_b)


@numba.njit(cache=True, nogil=True)
def update(codes, times, vals, missing, alpha, impute_mean, protect_z, protect_max, max_age, rate_window, count_w, warmup,
           sh_field, sh_size, fstate, ring_v, ring_t, ring_s, kstate, tring, shring, fout, kout,
           shout):  # pragma: no cover - compiled
    n_rows, n_f = vals.shape
    cap = ring_v.shape[2]
    tcap = tring.shape[1]
    for i in range(n_rows):
        k = codes[i]
        t = times[i]
        count = kstate[k, K_COUNT]
        # -- per key: time since the previous event, its ratio to the usual gap, events in the rate window
        if count > 0:
            dt = max(t - kstate[k, K_LAST_T], 0.0)
            kout[O_DT, i] = dt
            kout[O_DT_RATIO, i] = np.log((dt + 1e-3) / (kstate[k, K_EWM_DT] + 1e-3)) if count > 1 else 0.0
        else:
            dt = 0.0
            kout[O_DT, i] = np.nan
            kout[O_DT_RATIO, i] = 0.0
        m = int(kstate[k, K_TRING_N])
        head = int(kstate[k, K_TRING_HEAD])
        c = 0
        if count_w:  # only when the feature is kept: a scan of the key's last N event times
            for j in range(m):
                if t - tring[k, (head - 1 - j) % tcap] <= rate_window:
                    c += 1
        kout[O_COUNT_W, i] = c
        kout[O_WARM, i] = 1.0 if count >= warmup else 0.0
        # -- per field
        for f in range(n_f):
            x = vals[i, f]
            miss = missing[i, f]
            fs = fstate[k, f]
            rn = int(fs[RING_N])
            rh = int(fs[RING_HEAD])
            # expire values older than max_age (oldest first: the ring is in arrival order)
            if max_age > 0:
                while rn > 0 and t - ring_t[k, f, (rh - rn) % cap] > max_age:
                    _sorted_remove(ring_s[k, f], rn, ring_v[k, f, (rh - rn) % cap])
                    rn -= 1
            if miss:
                if fs[HAS_LAST] > 0:
                    x = fs[EWM_MEAN] if impute_mean else fs[LAST]
                else:
                    x = np.nan
            if rn > 0:
                med, mad = _median_mad(ring_s[k, f], rn)
            else:
                med, mad = np.nan, 0.0
            sd = np.sqrt(fs[EWM_VAR]) if fs[EWM_N] > 1 else 0.0
            # the robust scale, but never below the key's long-run spread: a key whose normal is spiky (heavy
            # tails, several levels) has a small MAD and would read every one of its usual spikes as extreme
            scale = max(_MAD_TO_SD * mad, sd)
            # never finer than the key's resolution (its smallest change seen): a quantised reading that sat
            # still for N events and then moves one step is one step off, not a billion deviations
            scale = max(scale, fs[RES])
            if scale <= 0.0:
                scale = 1e-9 * abs(med) + 1e-12 if rn > 0 else 1.0
            fout[f, O_LEVEL, i] = x
            fout[f, O_MISSING, i] = 1.0 if miss else 0.0
            if rn >= MIN_FILL and np.isfinite(x):
                rz = (x - med) / scale
            else:
                rz = 0.0
            fout[f, O_RZ, i] = rz
            if fs[EWM_N] > 1 and np.isfinite(x):
                fout[f, O_Z, i] = (x - fs[EWM_MEAN]) / max(sd, scale)
            else:
                fout[f, O_Z, i] = 0.0
            if fs[HAS_LAST] > 0 and np.isfinite(x):
                fout[f, O_DELTA, i] = (x - fs[LAST]) / scale
                same = fs[SAME] + 1.0 if x == fs[LAST] else 0.0
            else:
                fout[f, O_DELTA, i] = 0.0
                same = 0.0
            fout[f, O_REPEAT, i] = same
            if f == sh_field and sh_size > 1:
                sn = int(kstate[k, K_SH_N])
                sh_head = int(kstate[k, K_SH_HEAD])
                scap = shring.shape[1]
                for j in range(sh_size - 1):
                    if j < sn and rn > 0:
                        shout[j, i] = (shring[k, (sh_head - 1 - j) % scap] - med) / scale
                    else:
                        shout[j, i] = np.nan
            if miss or not np.isfinite(x):
                fs[RING_N] = rn
                continue
            # -- learn: protected values (far from the key's baseline) stay out of it, for a bounded time
            deviant = rn >= MIN_FILL and abs(rz) > protect_z
            run = fs[RUN] + 1.0 if deviant else 0.0
            accept = (not deviant) or run > protect_max
            fs[RUN] = run
            fs[SAME] = same
            if fs[HAS_LAST] > 0 and x != fs[LAST]:
                step = abs(x - fs[LAST])
                fs[RES] = step if fs[RES] <= 0.0 else min(fs[RES], step)
            fs[LAST] = x
            fs[HAS_LAST] = 1.0
            if f == sh_field and sh_size > 1:
                scap = shring.shape[1]
                sh_head = int(kstate[k, K_SH_HEAD])
                shring[k, sh_head % scap] = x
                kstate[k, K_SH_HEAD] = (sh_head + 1) % scap
                kstate[k, K_SH_N] = min(kstate[k, K_SH_N] + 1, scap)
            if accept:
                if rn == cap:
                    _sorted_remove(ring_s[k, f], rn, ring_v[k, f, (rh - rn) % cap])
                    rn -= 1
                _sorted_insert(ring_s[k, f], rn, x)
                ring_v[k, f, rh] = x
                ring_t[k, f, rh] = t
                fs[RING_HEAD] = (rh + 1) % cap
                rn += 1
            # the EWM takes isolated deviant values too, winsorised at protect_z of its own scale, so a key whose
            # normal is spiky gets the spread it has; a deviant *run* stays out of it (as out of the ring) until
            # protect_max, so a sustained regime keeps deviating
            if deviant and 1 < run <= protect_max:
                fs[RING_N] = rn
                continue
            if fs[EWM_N] > 1:
                lim = protect_z * max(np.sqrt(fs[EWM_VAR]), scale)
                xe = min(max(x, fs[EWM_MEAN] - lim), fs[EWM_MEAN] + lim)
            else:
                xe = x
            # bias-corrected start: the running mean until the span is reached, then the EWM
            a = max(alpha, 1.0 / (fs[EWM_N] + 1.0))
            d = xe - fs[EWM_MEAN]
            fs[EWM_MEAN] += a * d
            fs[EWM_VAR] = (1.0 - a) * (fs[EWM_VAR] + a * d * d)
            fs[EWM_N] += 1.0
            fs[RING_N] = rn
        # -- per key state after the event
        if count > 0:
            a = max(alpha, 1.0 / count)
            kstate[k, K_EWM_DT] = dt if count == 1 else kstate[k, K_EWM_DT] + a * (dt - kstate[k, K_EWM_DT])
        kstate[k, K_COUNT] = count + 1
        kstate[k, K_LAST_T] = t
        tring[k, head] = t
        kstate[k, K_TRING_HEAD] = (head + 1) % tcap
        kstate[k, K_TRING_N] = min(m + 1, tcap)
