"""Exact spherical tests on many packed footprints at once, with numpy.

`PolySet` holds footprints packed by `cohort.store.geo.Footprint.pack` (unit
vectors, each ring oriented with its interior on the left) and answers, one
value per footprint: does it intersect a region (closed sets: touching
counts), does it contain a point, how far is a point from it (great-circle
radians, 0 inside). Edges are minor great-circle arcs; two arcs cross when
each one's ends lie on opposite sides of the other's great circle and the
crossing is the same point of both (the test of s2's ``SimpleCrossing``).
A point is inside a ring when the arc from it to the midpoint M of a
reference edge crosses the other edges an even number of times and it lies
on the inner side of that edge's great circle (arriving at M from inside),
or an odd number of times and it lies on the outer side. Near-degenerate
cases (a vertex within `EPS` of an arc) are decided again in pure Python
with another reference edge.
"""

from __future__ import annotations

import struct
from typing import Sequence

import numpy as np

from .geo import EPS, PACK_MAGIC, _ring_contains, _touches

# --- many polygons at once (numpy) ------------------------------------------

def _rows_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross products of (n, 3) arrays (either may be one row)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0), axis=-1)


def _normalize(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.sqrt(_rows_dot(v, v))
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / n[:, None], n


class PolySet:
    """Packed footprints (see `Footprint.pack`) as arrays, for exact tests of
    many at once. Every answer is one value per footprint, in input order."""

    def __init__(self, blobs: Sequence[bytes], tables: Sequence[bytes | None] | None = None):
        self.n = len(blobs)
        counts = np.fromiter(map(len, blobs), dtype=np.int64, count=self.n) // 24
        self.V = np.frombuffer(b"".join(blobs), dtype=np.float64).reshape(-1, 3)
        rec_start = np.zeros(self.n, dtype=np.int64)
        np.cumsum(counts[:-1], out=rec_start[1:])
        self.rec_start = rec_start
        if tables is None or all(t is None for t in tables):
            self.simple = True
            ring_start, ring_len = rec_start, counts
            ring_rec = ring_poly = np.arange(self.n)
            ring_hole = np.zeros(self.n, dtype=bool)
            self.npoly = self.n
        else:
            self.simple = False
            rs, rl, rr, rp, rh = [], [], [], [], []
            npoly = 0
            for i, t in enumerate(tables):
                start = int(rec_start[i])
                if t is None:
                    rs.append(start), rl.append(int(counts[i])), rr.append(i)
                    rp.append(npoly), rh.append(False)
                    npoly += 1
                    continue
                tab = np.frombuffer(t, dtype=np.int32).reshape(-1, 3)
                base = npoly
                for poly, hole, nv in tab.tolist():
                    rs.append(start), rl.append(nv), rr.append(i)
                    rp.append(base + poly), rh.append(bool(hole))
                    start += nv
                    npoly = max(npoly, base + poly + 1)
            ring_start, ring_len = np.array(rs, np.int64), np.array(rl, np.int64)
            ring_rec, ring_poly = np.array(rr, np.int64), np.array(rp, np.int64)
            ring_hole = np.array(rh, dtype=bool)
            self.npoly = npoly
        self.ring_start, self.ring_len, self.ring_rec = ring_start, ring_len, ring_rec
        self.ring_poly, self.ring_hole = ring_poly, ring_hole
        self.poly_rec = np.zeros(self.npoly, dtype=np.int64)
        self.poly_rec[ring_poly] = ring_rec
        nv = len(self.V)
        nxt = np.arange(1, nv + 1)
        if nv:
            nxt[ring_start + ring_len - 1] = ring_start
        self.A, self.B = self.V, self.V[nxt]
        self.N, _ = _normalize(_cross(self.A, self.B))
        self.edge_ring = np.repeat(np.arange(len(ring_start)), ring_len)
        self.edge_rec = ring_rec[self.edge_ring]
        # reference edge of each ring: its first; M its midpoint, N points inside
        self.ref = ring_start
        self.M, _ = _normalize(self.A[self.ref] + self.B[self.ref])
        self.Nref = self.N[self.ref]

    @classmethod
    def from_packed(cls, blobs: Sequence[bytes]) -> "PolySet":
        """From `cohort.store.geo.Footprint.packed` blobs."""
        lens = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        if not (lens % 24).any():
            return cls(blobs)
        coords, tables = [], []
        for b in blobs:
            if len(b) % 24 == 0:
                coords.append(b)
                tables.append(None)
                continue
            nrings, magic = struct.unpack("<ii", b[-8:])
            if magic != PACK_MAGIC:
                raise ValueError("not a packed footprint")
            cut = len(b) - 8 - 12 * nrings
            coords.append(b[:cut])
            tables.append(b[cut:-8])
        return cls(coords, tables)

    def __len__(self) -> int:
        return self.n

    def _ring_xyz(self, r: int) -> list:
        s = int(self.ring_start[r])
        return [tuple(v) for v in self.V[s:s + int(self.ring_len[r])].tolist()]

    def _combine(self, ring_in: np.ndarray) -> np.ndarray:
        """Per-footprint containment from per-ring (outer: in; hole: in the hole)."""
        if self.simple:
            return ring_in
        outer = np.zeros(self.npoly, dtype=bool)
        holed = np.zeros(self.npoly, dtype=bool)
        np.logical_or.at(outer, self.ring_poly[~self.ring_hole], ring_in[~self.ring_hole])
        np.logical_or.at(holed, self.ring_poly[self.ring_hole], ring_in[self.ring_hole])
        out = np.zeros(self.n, dtype=bool)
        np.logical_or.at(out, self.poly_rec, outer & ~holed)
        return out

    # -- one point, every footprint --

    def contains(self, p: Sequence[float]) -> np.ndarray:
        """Does each footprint contain (or touch) the unit vector `p`?"""
        p = np.asarray(p, dtype=np.float64)
        nring = len(self.ring_start)
        if nring == 0:
            return np.zeros(self.n, dtype=bool)
        side = self.Nref @ p
        pm, pmn = _normalize(_cross(p[None, :], self.M))
        er = self.edge_ring
        pme = pm[er]
        s_c, s_d = _rows_dot(pme, self.A), _rows_dot(pme, self.B)
        t_p, t_m = self.N @ p, _rows_dot(self.N, self.M[er])
        use = np.ones(len(er), dtype=bool)
        use[self.ref] = False
        clear = (((s_c > EPS) & (s_d > EPS)) | ((s_c < -EPS) & (s_d < -EPS))
                 | ((t_p > EPS) & (t_m > EPS)) | ((t_p < -EPS) & (t_m < -EPS)))
        small = np.minimum(np.minimum(np.abs(s_c), np.abs(s_d)),
                           np.minimum(np.abs(t_p), np.abs(t_m))) < EPS
        live = use & ~clear
        degen = live & small
        for e in np.flatnonzero(degen).tolist():
            r = er[e]
            degen[e] = _touches(tuple(p), tuple(self.M[r]), tuple(pm[r]), tuple(self.A[e]),
                                tuple(self.B[e]), tuple(self.N[e]), s_c[e], s_d[e], t_p[e],
                                t_m[e])
        crossing = live & ~small & (s_c * t_m > 0)
        odd = np.bincount(er, weights=crossing, minlength=nring).astype(np.int64) % 2 == 1
        bad = (np.bincount(er, weights=degen, minlength=nring) > 0) | (np.abs(side) < EPS) \
            | ~(pmn >= EPS)
        ring_in = (side > 0) ^ odd
        pt = tuple(p.tolist())
        for r in np.flatnonzero(bad).tolist():
            ring_in[r] = _ring_contains(self._ring_xyz(r), pt, boundary=not self.ring_hole[r])
        return self._combine(ring_in)

    def distance(self, p: Sequence[float]) -> np.ndarray:
        """Great-circle distance (radians) from the unit vector `p` to each
        footprint: 0 inside, else to the nearest edge."""
        p = np.asarray(p, dtype=np.float64)
        if self.n == 0:
            return np.zeros(0)
        A, B, N = self.A, self.B, self.N
        ua = _rows_dot(_cross(N, A), np.broadcast_to(p, A.shape))
        ub = _rows_dot(_cross(B, N), np.broadcast_to(p, A.shape))
        perp = np.arcsin(np.minimum(1.0, np.abs(N @ p)))
        da = 2 * np.arcsin(np.minimum(1.0, np.sqrt(((A - p) ** 2).sum(1)) / 2))
        db = 2 * np.arcsin(np.minimum(1.0, np.sqrt(((B - p) ** 2).sum(1)) / 2))
        d = np.where((ua >= 0) & (ub >= 0), perp, np.minimum(da, db))
        out = np.minimum.reduceat(d, self.rec_start)
        out[self.contains(p)] = 0.0
        return out

    # -- many points, one footprint --

    def contains_points(self, P: np.ndarray) -> np.ndarray:
        """For a set of one footprint: does it contain (or touch) each row of P?"""
        P = np.asarray(P, dtype=np.float64).reshape(-1, 3)
        K = len(P)
        step = max(1, (1 << 21) // max(1, int(self.ring_len.max(initial=1))))
        if K > step:  # bounded memory for big regions
            return np.concatenate([self.contains_points(P[i:i + step])
                                   for i in range(0, K, step)])
        ring_in = np.zeros((len(self.ring_start), K), dtype=bool)
        for r in range(len(self.ring_start)):
            s, n = int(self.ring_start[r]), int(self.ring_len[r])
            A, B, N = self.A[s:s + n], self.B[s:s + n], self.N[s:s + n]
            m, nref = self.M[r], self.Nref[r]
            side = P @ nref
            pm, pmn = _normalize(_cross(P, m[None, :]))
            s_c, s_d = pm @ A.T, pm @ B.T
            t_p, t_m = P @ N.T, (N @ m)[None, :]
            clear = (((s_c > EPS) & (s_d > EPS)) | ((s_c < -EPS) & (s_d < -EPS))
                     | ((t_p > EPS) & (t_m > EPS)) | ((t_p < -EPS) & (t_m < -EPS)))
            small = np.minimum(np.minimum(np.abs(s_c), np.abs(s_d)),
                               np.minimum(np.abs(t_p), np.abs(t_m))) < EPS
            clear[:, 0] = True  # the reference edge itself
            degen = ~clear & small
            for k, e in zip(*np.nonzero(degen)):
                degen[k, e] = _touches(tuple(P[k]), tuple(m), tuple(pm[k]), tuple(A[e]),
                                       tuple(B[e]), tuple(N[e]), s_c[k, e], s_d[k, e],
                                       t_p[k, e], t_m[0, e])
            crossing = ~clear & ~small & (s_c * t_m > 0)
            odd = crossing.sum(1) % 2 == 1
            ins = (side > 0) ^ odd
            bad = degen.any(1) | (np.abs(side) < EPS) | ~(pmn >= EPS)
            if bad.any():
                xyz = self._ring_xyz(r)
                for k in np.flatnonzero(bad).tolist():
                    ins[k] = _ring_contains(xyz, tuple(P[k].tolist()),
                                            boundary=not self.ring_hole[r])
            ring_in[r] = ins
        if self.simple:
            return ring_in[0]
        out = np.zeros(K, dtype=bool)
        for poly in range(self.npoly):
            rings = np.flatnonzero(self.ring_poly == poly)
            outer = [r for r in rings if not self.ring_hole[r]]
            holes = [r for r in rings if self.ring_hole[r]]
            acc = ring_in[outer[0]].copy()
            for h in holes:
                acc &= ~ring_in[h]
            out |= acc
        return out

    def _outer_first_vertices(self) -> tuple[np.ndarray, np.ndarray]:
        """(first vertex of each polygon's outer ring, its footprint index)."""
        rings = np.flatnonzero(~self.ring_hole)
        return self.V[self.ring_start[rings]], self.ring_rec[rings]

    # -- every footprint against one region --

    def intersects(self, region: "PolySet") -> np.ndarray:
        """Does each footprint intersect (or touch) the one-footprint set `region`?"""
        if self.n == 0:
            return np.zeros(0, dtype=bool)
        edge_hit = np.zeros(len(self.A), dtype=bool)
        if len(region.A) <= 64:   # every pair, as matrix products
            step = max(1, (1 << 20) // len(region.A))
            for lo in range(0, len(self.A), step):
                sl = slice(lo, lo + step)
                edge_hit[sl] = _edges_meet(self.A[sl], self.B[sl], self.N[sl], region.A,
                                           region.B, region.N)
        else:                     # a big region: only pairs whose caps overlap
            ii, qq = _cap_pairs(_caps(self.A, self.B), _caps(region.A, region.B))
            meet = _pairs_meet(self.A[ii], self.B[ii], self.N[ii], region.A[qq],
                               region.B[qq], region.N[qq])
            edge_hit[ii[meet]] = True
        out = np.zeros(self.n, dtype=bool)
        out[self.edge_rec[edge_hit]] = True
        # no boundary contact: one inside the other?
        rest = ~out
        if rest.any():
            P, prec = self._outer_first_vertices()
            sel = rest[prec]
            if sel.any():
                inside = region.contains_points(P[sel])
                out[prec[sel][inside]] = True
        rest = ~out
        if rest.any():
            Q, _ = region._outer_first_vertices()
            for q in Q:
                out |= rest & self.contains(q)
        return out


def _caps(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smallest caps around the arcs AB: centre M, cos and sin of the radius."""
    M, _ = _normalize(A + B)
    return M, _rows_dot(M, A), np.sqrt(np.maximum(0.0, 1.0 - _rows_dot(M, A) ** 2))


def _cap_pairs(cap1, cap2) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) whose caps overlap (a superset of the arcs that meet)."""
    M1, c1, s1 = cap1
    M2, c2, s2 = cap2
    ii, jj = [], []
    step = max(1, (1 << 20) // max(1, len(M2)))
    for lo in range(0, len(M1), step):
        sl = slice(lo, lo + step)
        # angle(M1, M2) <= r1 + r2  <=>  M1.M2 >= cos(r1 + r2)
        ok = (M1[sl] @ M2.T) >= (np.outer(c1[sl], c2) - np.outer(s1[sl], s2) - 1e-9)
        i, j = np.nonzero(ok)
        ii.append(i + lo)
        jj.append(j)
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ii), np.concatenate(jj)


def _edges_meet(A, B, N, C, D, NQ) -> np.ndarray:
    """For each edge AB (unit normal N): does it cross or touch any edge CD (NQ)?"""
    s_c, s_d = N @ C.T, N @ D.T
    t_a, t_b = A @ NQ.T, B @ NQ.T
    hit = (s_c * s_d < 0) & (t_a * t_b < 0) & (s_c * t_b > 0)
    near = ((np.abs(s_c) < EPS) | (np.abs(s_d) < EPS)
            | (np.abs(t_a) < EPS) | (np.abs(t_b) < EPS)) & ~hit
    ii, qq = np.nonzero(near)
    if len(ii):
        hit[ii, qq] = _pairs_meet(A[ii], B[ii], N[ii], C[qq], D[qq], NQ[qq])
    return hit.any(1)


def _pairs_meet(A, B, N, C, D, NQ) -> np.ndarray:
    """Row by row: does arc AB (unit normal N) cross or touch arc CD (NQ)?"""
    s_c, s_d = _rows_dot(N, C), _rows_dot(N, D)
    t_a, t_b = _rows_dot(NQ, A), _rows_dot(NQ, B)
    hit = (s_c * s_d < 0) & (t_a * t_b < 0) & (s_c * t_b > 0)
    near = ((np.abs(s_c) < EPS) | (np.abs(s_d) < EPS)
            | (np.abs(t_a) < EPS) | (np.abs(t_b) < EPS)) & ~hit
    k = np.flatnonzero(near)
    if len(k):
        n, nq = N[k], NQ[k]
        UA, UB = _cross(n, A[k]), _cross(B[k], n)
        UAq, UBq = _cross(nq, C[k]), _cross(D[k], nq)

        def on(p, u1, u2, sv):
            return (np.abs(sv) < EPS) & (_rows_dot(p, u1) >= -EPS) & (_rows_dot(p, u2) >= -EPS)
        hit[k] = (on(C[k], UA, UB, s_c[k]) | on(D[k], UA, UB, s_d[k])
                  | on(A[k], UAq, UBq, t_a[k]) | on(B[k], UAq, UBq, t_b[k]))
    return hit


def ring_self_crossing(xyz: Sequence[Sequence[float]]) -> bool:
    """Do two non-adjacent edges of the ring (unit vectors) cross strictly?"""
    A = np.asarray(xyz, dtype=np.float64)
    B = np.roll(A, -1, axis=0)
    N, _ = _normalize(_cross(A, B))
    n = len(A)
    cap = _caps(A, B)
    i, j = _cap_pairs(cap, cap)
    keep = (j > i + 1) & ~((i == 0) & (j == n - 1))
    i, j = i[keep], j[keep]
    s_c, s_d = _rows_dot(N[i], A[j]), _rows_dot(N[i], B[j])
    t_a, t_b = _rows_dot(N[j], A[i]), _rows_dot(N[j], B[i])
    return bool(((s_c * s_d < 0) & (t_a * t_b < 0) & (s_c * t_b > 0)).any())
