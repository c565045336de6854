//! Implicit-feedback matrix factorisation (Hu, Koren & Volinsky, 2008).
//!
//! Every observed (user, movie) pair is a positive preference `p = 1` held
//! with confidence `c = 1 + α·r`, where `r` sums the interaction weights; every
//! unobserved pair is a `p = 0` held with confidence 1. Alternating least
//! squares fixes one side's factors and solves the other side exactly (or
//! nearly), which keeps each step a convex problem.
//!
//! The default solver is the conjugate-gradient variant popularised by the
//! `implicit` library (Takács, Pilászy & Tikk, 2011): the shared `YᵀY` is
//! computed once per sweep, and each row runs a few CG steps warm-started from
//! its previous factors, so a sweep costs `O(nnz·f·steps + n·f²)` instead of
//! `O(nnz·f² + n·f³)`. A hand-written Cholesky solver is kept as the exact
//! reference.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::csr::Csr;
use crate::ids::{MovieId, UserId};
use crate::recommend::{Dataset, InteractionKind, Recommender, ScoredItem};
use crate::ValidationError;

/// Initial factors are tiny so the first solve is driven by the data, not the draw.
const INIT_SCALE: f32 = 0.01;
/// Residual norm² below which CG has nothing left to fix (as in `implicit`).
const CG_EPSILON: f32 = 1e-20;
/// Width of the unrolled accumulators; 16 lanes fill two AVX registers.
const LANES: usize = 16;
/// Users scored per matrix product in [`AlsModel::top_n_all`]; bounds the buffer.
const SCORE_BLOCK: usize = 64;
/// Work chunks per solver thread; enough to even out rows of very different length.
const CHUNKS_PER_THREAD: usize = 8;
/// Nonzeros to look ahead when prefetching factor rows; covers a DRAM round trip.
const PREFETCH_AHEAD: usize = 8;

/// How each row's least-squares problem is solved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// A few warm-started CG steps per row: fast, and what the benchmarks compare.
    #[default]
    Cg,
    /// Exact per-row Cholesky solve in f64: slow, but the reference for correctness.
    Cholesky,
}

/// Hyper-parameters of an ALS fit, serialisable so a training run can be reproduced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlsParams {
    /// Latent dimensions; more capture finer taste at quadratic cost per row.
    pub factors: usize,
    /// L2 penalty λ on every factor vector; keeps sparse rows from overfitting.
    pub regularization: f32,
    /// Confidence slope α in `c = 1 + α·r`; how much more an interaction counts than silence.
    pub alpha: f32,
    /// Full sweeps (users then items); ALS converges in a handful.
    pub iterations: usize,
    /// `r` contributed by a like, so a like outweighs a mere view.
    pub like_weight: f32,
    /// `r` contributed by a view.
    pub view_weight: f32,
    /// Seed of the factor initialisation, so a fit is reproducible.
    pub seed: u64,
    /// CG steps per row and sweep; 3 is `implicit`'s default and usually enough.
    pub cg_steps: usize,
    /// Per-row solver.
    pub solver: Solver,
    /// Worker threads for the row solves (0 = all cores); results do not depend on it.
    pub threads: usize,
}

impl Default for AlsParams {
    fn default() -> Self {
        Self {
            factors: 64,
            regularization: 0.01,
            // Tuned on the synthetic medium world: NDCG@10 peaks at α ≈ 2–5 and drops
            // ~30% at Hu et al.'s 40, since r here is 1–3 rather than a watch count.
            alpha: 5.0,
            iterations: 15,
            like_weight: 2.0,
            view_weight: 1.0,
            seed: 42,
            cg_steps: 3,
            solver: Solver::Cg,
            threads: 0,
        }
    }
}

impl AlsParams {
    /// Reject settings that would make the fit meaningless or numerically undefined.
    pub fn validate(&self) -> Result<(), ValidationError> {
        fn non_negative(field: &str, v: f32) -> Result<(), ValidationError> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(ValidationError::new(
                    field,
                    "must be a finite non-negative number",
                ))
            }
        }
        if self.factors == 0 || self.factors > 1024 {
            return Err(ValidationError::new(
                "factors",
                "must be between 1 and 1024",
            ));
        }
        non_negative("regularization", self.regularization)?;
        non_negative("alpha", self.alpha)?;
        non_negative("like_weight", self.like_weight)?;
        non_negative("view_weight", self.view_weight)?;
        if self.solver == Solver::Cg && self.cg_steps == 0 {
            return Err(ValidationError::new("cg_steps", "must be at least 1"));
        }
        Ok(())
    }

    fn weight(&self, kind: InteractionKind) -> f32 {
        match kind {
            InteractionKind::View => self.view_weight,
            InteractionKind::Like => self.like_weight,
        }
    }
}

/// ALS's user→item confidences.
impl Csr {
    /// User→item matrix with duplicate pairs summed; interactions whose indices fall
    /// outside the dataset's tables are ignored rather than trusted.
    fn user_items(data: &Dataset, params: &AlsParams) -> Self {
        let (n_users, n_items) = (data.n_users(), data.n_items());
        let valid = |u: u32, i: u32| (u as usize) < n_users && (i as usize) < n_items;

        // Counting sort by user keeps this O(nnz) before the short per-row sorts.
        let mut indptr = vec![0usize; n_users + 1];
        for it in &data.interactions {
            if valid(it.user, it.item) {
                indptr[it.user as usize + 1] += 1;
            }
        }
        for u in 0..n_users {
            indptr[u + 1] += indptr[u];
        }
        let mut cursor = indptr.clone();
        let mut entries = vec![(0u32, 0f32); indptr[n_users]];
        for it in &data.interactions {
            if valid(it.user, it.item) {
                let slot = &mut cursor[it.user as usize];
                entries[*slot] = (it.item, params.weight(it.kind));
                *slot += 1;
            }
        }

        let mut out = Csr {
            ptr: Vec::with_capacity(n_users + 1),
            idx: Vec::with_capacity(entries.len()),
            val: Vec::with_capacity(entries.len()),
        };
        out.ptr.push(0);
        for u in 0..n_users {
            let row = &mut entries[indptr[u]..indptr[u + 1]];
            row.sort_unstable_by_key(|&(item, _)| item);
            let mut k = 0;
            while k < row.len() {
                let item = row[k].0;
                let mut r = 0.0f32;
                while k < row.len() && row[k].0 == item {
                    r += row[k].1;
                    k += 1;
                }
                // A zero-weight pair carries no preference, so it is not a positive at all.
                if r > 0.0 {
                    out.idx.push(item);
                    out.val.push(params.alpha * r);
                }
            }
            out.ptr.push(out.idx.len());
        }
        out
    }
}

/// Fit implicit ALS on `data`. Params are expected to pass [`AlsParams::validate`];
/// invalid ones never panic but may yield NaN factors, which rank nothing.
pub fn fit(data: &Dataset, params: &AlsParams) -> AlsModel {
    let f = params.factors;
    let user_items = Csr::user_items(data, params);
    let item_users = user_items.transpose(data.n_items());

    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut user_factors =
        Array2::from_shape_simple_fn((data.n_users(), f), || rng.random::<f32>() * INIT_SCALE);
    let mut item_factors =
        Array2::from_shape_simple_fn((data.n_items(), f), || rng.random::<f32>() * INIT_SCALE);

    let threads = match params.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    for _ in 0..params.iterations {
        solve_side(
            &mut user_factors,
            &item_factors,
            &user_items,
            params,
            threads,
        );
        solve_side(
            &mut item_factors,
            &user_factors,
            &item_users,
            params,
            threads,
        );
    }

    // Shapes agree by construction (every table comes from `data`), so no validation.
    AlsModel::assemble(AlsModelRepr {
        users: data.users.clone(),
        items: data.items.clone(),
        user_factors,
        item_factors,
        seen_indptr: user_items.ptr,
        seen_indices: user_items.idx,
        filter_seen: true,
    })
}

/// Everything a row solve reads; shared by all threads of one half-sweep.
struct SideCtx<'a> {
    other: &'a [f32],
    gram: &'a [f32],
    csr: &'a Csr,
    f: usize,
    cg_steps: usize,
    solver: Solver,
}

/// Re-solve every row of `x` against the fixed factors `other`.
fn solve_side(
    x: &mut Array2<f32>,
    other: &Array2<f32>,
    csr: &Csr,
    params: &AlsParams,
    threads: usize,
) {
    let f = params.factors;
    if f == 0 {
        return;
    }
    // YᵀY + λI is shared by all rows; matrixmultiply's GEMM makes it cheap.
    let mut gram = other.t().dot(other);
    for d in 0..f {
        gram[[d, d]] += params.regularization;
    }
    let gram: Vec<f32> = gram.iter().copied().collect();
    let (Some(xs), Some(ys)) = (x.as_slice_mut(), other.as_slice()) else {
        // Unreachable: both arrays were created in standard layout by `fit`.
        return;
    };
    let ctx = SideCtx {
        other: ys,
        gram: &gram,
        csr,
        f,
        cg_steps: params.cg_steps,
        solver: params.solver,
    };

    if threads <= 1 {
        solve_rows(&ctx, 0..csr.n_rows(), xs);
        return;
    }
    // More chunks than threads, handed out from a shared counter, so a thread that drew
    // light rows keeps working. Every row's arithmetic is independent of the split, so
    // results are identical for any thread count.
    let bounds = balanced_bounds(&csr.ptr, f, threads * CHUNKS_PER_THREAD);
    let mut chunks = Vec::with_capacity(bounds.len());
    let mut rest = xs;
    for w in bounds.windows(2) {
        let (chunk, tail) = std::mem::take(&mut rest).split_at_mut((w[1] - w[0]) * f);
        rest = tail;
        chunks.push(Mutex::new(Some((w[0]..w[1], chunk))));
    }
    let next = AtomicUsize::new(0);
    let work = || {
        while let Some(slot) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
            // Poisoning means another worker panicked; the scope re-raises that panic.
            if let Some((rows, x)) = slot.lock().ok().and_then(|mut s| s.take()) {
                solve_rows(&ctx, rows, x);
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            // A failed spawn only costs parallelism: the calling thread drains the queue.
            let _ = std::thread::Builder::new()
                .name("als-solve".into())
                .spawn_scoped(scope, work);
        }
        work();
    });
}

/// Row boundaries (`0 = b₀ < … < b_k = rows`) giving each part about the same work,
/// counting each nonzero and the f² term of every row.
fn balanced_bounds(indptr: &[usize], f: usize, parts: usize) -> Vec<usize> {
    let rows = indptr.len().saturating_sub(1);
    let cost = |r: usize| indptr[r] + r * (f / 2).max(1);
    let total = cost(rows);
    let mut bounds = vec![0];
    for t in 1..parts.max(1) {
        let target = total * t / parts;
        // First row whose cumulative cost reaches the target (cost is non-decreasing).
        let (mut lo, mut hi) = (0, rows);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if cost(mid) < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if bounds.last().is_some_and(|&b| lo > b) && lo < rows {
            bounds.push(lo);
        }
    }
    bounds.push(rows);
    bounds
}

/// Solve `rows` of one side into `x` (their factors, row-major, `rows.len() × f`).
fn solve_rows(ctx: &SideCtx<'_>, rows: Range<usize>, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86::Avx2Fma::detect() {
        // SAFETY: `k` exists only if the CPU supports AVX2 and FMA.
        unsafe { x86::solve_rows(k, ctx, rows, x) };
        return;
    }
    solve_rows_with(Portable, ctx, rows, x);
}

#[inline(always)]
fn solve_rows_with<K: Kernel>(k: K, ctx: &SideCtx<'_>, rows: Range<usize>, x: &mut [f32]) {
    let f = ctx.f;
    match ctx.solver {
        Solver::Cg => {
            let mut scratch = vec![0f32; 3 * f];
            let (r, rest) = scratch.split_at_mut(f);
            let (p, ap) = rest.split_at_mut(f);
            for (row, xr) in rows.zip(x.chunks_exact_mut(f)) {
                let (idx, vals) = ctx.csr.row(row);
                cg_row(k, ctx, idx, vals, xr, r, p, ap);
            }
        }
        Solver::Cholesky => {
            let mut a = vec![0f64; f * f];
            let mut b = vec![0f64; f];
            for (row, xr) in rows.zip(x.chunks_exact_mut(f)) {
                let (idx, vals) = ctx.csr.row(row);
                cholesky_row(ctx, idx, vals, xr, &mut a, &mut b);
            }
        }
    }
}

/// A few CG steps on `(YᵀC_uY + λI) x = YᵀC_u p_u`, never forming the f×f matrix:
/// `YᵀC_uY = YᵀY + Σ (c−1) y yᵀ` over the row's nonzeros only.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // scratch buffers are passed in to avoid per-row allocation
fn cg_row<K: Kernel>(
    k: K,
    ctx: &SideCtx<'_>,
    idx: &[u32],
    vals: &[f32],
    x: &mut [f32],
    r: &mut [f32],
    p: &mut [f32],
    ap: &mut [f32],
) {
    let (f, other) = (ctx.f, ctx.other);
    // r = b − A·x, where b = Σ c·y and the (c−1)·y·(y·x) part of A·x folds in per item.
    k.gemv(ctx.gram, x, r, -1.0);
    add_rank_ones(k, other, f, idx, vals, x, r, |v, yx| 1.0 + v - v * yx);
    p.copy_from_slice(r);
    let mut rs_old = k.dot(r, r);
    if rs_old < CG_EPSILON {
        return;
    }
    for _ in 0..ctx.cg_steps {
        k.gemv(ctx.gram, p, ap, 1.0);
        add_rank_ones(k, other, f, idx, vals, p, ap, |v, yp| v * yp);
        let p_ap = k.dot(p, ap);
        // A is positive definite whenever λ > 0; with λ = 0 and no data it may not be.
        if p_ap <= 0.0 || p_ap.is_nan() {
            break;
        }
        let step = rs_old / p_ap;
        k.axpy(x, step, p);
        k.axpy(r, -step, ap);
        let rs_new = k.dot(r, r);
        if rs_new < CG_EPSILON {
            break;
        }
        let beta = rs_new / rs_old;
        k.xpby(r, beta, p);
        rs_old = rs_new;
    }
}

/// `out += Σ coef(c−1, y·v)·y` over a row's nonzeros, two at a time so each pass over
/// `v` and `out` serves two item rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // all borrowed views of one row solve
fn add_rank_ones<K: Kernel>(
    k: K,
    other: &[f32],
    f: usize,
    idx: &[u32],
    vals: &[f32],
    v: &[f32],
    out: &mut [f32],
    coef: impl Fn(f32, f32) -> f32,
) {
    let (mut pi, mut pv) = (idx.chunks_exact(2), vals.chunks_exact(2));
    for (n, (i2, c2)) in (&mut pi).zip(&mut pv).enumerate() {
        // Rows are scattered across a factor table that may not fit in cache: ask for
        // the ones a few pairs ahead now, so their loads overlap this pair's arithmetic.
        for &ahead in idx.iter().skip(2 * n + PREFETCH_AHEAD).take(2) {
            k.prefetch(&other[ahead as usize * f..][..f]);
        }
        let y1 = &other[i2[0] as usize * f..][..f];
        let y2 = &other[i2[1] as usize * f..][..f];
        let (d1, d2) = k.dot2(y1, y2, v);
        k.axpy2(out, coef(c2[0], d1), y1, coef(c2[1], d2), y2);
    }
    for (&i, &c) in pi.remainder().iter().zip(pv.remainder()) {
        let y = &other[i as usize * f..][..f];
        k.axpy(out, coef(c, k.dot(y, v)), y);
    }
}

/// Exact solve by forming `A = YᵀY + λI + Σ (c−1) y yᵀ` (lower triangle) in f64.
fn cholesky_row(
    ctx: &SideCtx<'_>,
    idx: &[u32],
    vals: &[f32],
    x: &mut [f32],
    a: &mut [f64],
    b: &mut [f64],
) {
    let f = ctx.f;
    for (dst, &src) in a.iter_mut().zip(ctx.gram) {
        *dst = f64::from(src);
    }
    b.fill(0.0);
    for (&i, &v) in idx.iter().zip(vals) {
        let y = &ctx.other[i as usize * f..][..f];
        let w = f64::from(v);
        for j in 0..f {
            let yj = f64::from(y[j]);
            let s = w * yj;
            for (akk, &yk) in a[j * f..=j * f + j].iter_mut().zip(y) {
                *akk += s * f64::from(yk);
            }
            b[j] += (1.0 + w) * yj;
        }
    }
    // A non-positive pivot means a singular system (λ = 0, no data): keep the old factors.
    if cholesky_solve(a, b, f) {
        for (xk, &bk) in x.iter_mut().zip(b.iter()) {
            *xk = bk as f32;
        }
    }
}

/// Solve `A·z = b` in place (`z` into `b`) from A's lower triangle; false if A is not SPD.
fn cholesky_solve(a: &mut [f64], b: &mut [f64], f: usize) -> bool {
    for j in 0..f {
        let (done, rest) = a.split_at_mut(j * f);
        let row_j = &mut rest[..=j];
        for k in 0..j {
            let row_k = &done[k * f..=k * f + k];
            let s: f64 = row_j[..k].iter().zip(&row_k[..k]).map(|(p, q)| p * q).sum();
            row_j[k] = (row_j[k] - s) / row_k[k];
        }
        let d = row_j[j] - row_j[..j].iter().map(|v| v * v).sum::<f64>();
        if d.is_nan() || d <= 0.0 {
            return false;
        }
        row_j[j] = d.sqrt();
    }
    for j in 0..f {
        let row = &a[j * f..=j * f + j];
        let s: f64 = row[..j].iter().zip(&b[..j]).map(|(l, z)| l * z).sum();
        b[j] = (b[j] - s) / row[j];
    }
    for j in (0..f).rev() {
        let s: f64 = (j + 1..f).map(|m| a[m * f + j] * b[m]).sum();
        b[j] = (b[j] - s) / a[j * f + j];
    }
    true
}

/// The vector primitives the solver is written in, so one body serves every ISA.
trait Kernel: Copy {
    /// `a · b`.
    fn dot(self, a: &[f32], b: &[f32]) -> f32;
    /// `y += a·x`.
    fn axpy(self, y: &mut [f32], a: f32, x: &[f32]);
    /// `p = r + beta·p`, the CG direction update.
    fn xpby(self, r: &[f32], beta: f32, p: &mut [f32]);

    /// Hint that `row` will be read soon; a no-op where unsupported.
    #[inline(always)]
    fn prefetch(self, _row: &[f32]) {}

    /// `(a1 · b, a2 · b)`, sharing the loads of `b`.
    #[inline(always)]
    fn dot2(self, a1: &[f32], a2: &[f32], b: &[f32]) -> (f32, f32) {
        (self.dot(a1, b), self.dot(a2, b))
    }

    /// `y += c1·x1 + c2·x2`, sharing the loads and stores of `y`.
    #[inline(always)]
    fn axpy2(self, y: &mut [f32], c1: f32, x1: &[f32], c2: f32, x2: &[f32]) {
        self.axpy(y, c1, x1);
        self.axpy(y, c2, x2);
    }

    /// `out = sign·M·v` for a row-major symmetric square `M`.
    #[inline(always)]
    fn gemv(self, m: &[f32], v: &[f32], out: &mut [f32], sign: f32) {
        for (o, row) in out.iter_mut().zip(m.chunks_exact(v.len().max(1))) {
            *o = sign * self.dot(row, v);
        }
    }
}

/// Safe scalar code for any CPU; LLVM vectorises the element-wise parts.
#[derive(Clone, Copy)]
struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        // Independent accumulators keep the adds from forming one serial chain.
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ca.zip(cb) {
            for ((s, &xv), &yv) in acc.iter_mut().zip(x).zip(y) {
                *s += xv * yv;
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        for (yk, &xk) in y.iter_mut().zip(x) {
            *yk += a * xk;
        }
    }

    #[inline(always)]
    fn xpby(self, r: &[f32], beta: f32, p: &mut [f32]) {
        for (pk, &rk) in p.iter_mut().zip(r) {
            *pk = rk + beta * *pk;
        }
    }
}

/// Hand-vectorised kernels: LLVM vectorises the dot-product reductions poorly (two
/// lanes wide), and these loops are where ALS spends nearly all its time.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Kernel, SideCtx};

    /// Proof that the CPU has AVX2 and FMA: only [`Avx2Fma::detect`] makes one.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2Fma(());

    impl Avx2Fma {
        /// The token if this CPU can run the AVX2+FMA kernels.
        pub(super) fn detect() -> Option<Self> {
            (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
                .then_some(Self(()))
        }
    }

    /// The whole row loop compiled with AVX2+FMA so the kernels inline into it.
    ///
    /// # Safety
    /// Only callable with a token from [`Avx2Fma::detect`], which the signature enforces.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn solve_rows(
        k: Avx2Fma,
        ctx: &SideCtx<'_>,
        rows: Range<usize>,
        x: &mut [f32],
    ) {
        super::solve_rows_with(k, ctx, rows, x);
    }

    /// Scoring loop compiled with AVX2+FMA so the dot product inlines into it.
    ///
    /// # Safety
    /// Only callable with a token from [`Avx2Fma::detect`], which the signature enforces.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn score_items(k: Avx2Fma, items: &[f32], u: &[f32], out: &mut [f32]) {
        super::score_items_with(k, items, u, out);
    }

    impl Kernel for Avx2Fma {
        #[inline(always)]
        fn dot(self, a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: `self` proves AVX2 and FMA are available.
            unsafe { dot(a, b) }
        }

        #[inline(always)]
        fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
            // SAFETY: `self` proves AVX2 and FMA are available.
            unsafe { axpy(y, a, x) }
        }

        #[inline(always)]
        fn xpby(self, r: &[f32], beta: f32, p: &mut [f32]) {
            // SAFETY: `self` proves AVX2 and FMA are available.
            unsafe { xpby(r, beta, p) }
        }

        #[inline(always)]
        fn prefetch(self, row: &[f32]) {
            for line in row.chunks(16) {
                // SAFETY: prefetching never faults, and the pointer is in bounds anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
        }

        #[inline(always)]
        fn dot2(self, a1: &[f32], a2: &[f32], b: &[f32]) -> (f32, f32) {
            // SAFETY: `self` proves AVX2 and FMA are available.
            unsafe { dot2(a1, a2, b) }
        }

        #[inline(always)]
        fn axpy2(self, y: &mut [f32], c1: f32, x1: &[f32], c2: f32, x2: &[f32]) {
            // SAFETY: `self` proves AVX2 and FMA are available.
            unsafe { axpy2(y, c1, x1, c2, x2) }
        }

        #[inline(always)]
        fn gemv(self, m: &[f32], v: &[f32], out: &mut [f32], sign: f32) {
            // SAFETY: `self` proves AVX2 and FMA are available.
            unsafe { gemv(m, v, out, sign) }
        }
    }

    /// Sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(s: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot2(a1: &[f32], a2: &[f32], b: &[f32]) -> (f32, f32) {
        let n = a1.len().min(a2.len()).min(b.len());
        let (a1, a2, b) = (&a1[..n], &a2[..n], &b[..n]);
        let (mut s1a, mut s1b, mut s2a, mut s2b) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let mut off = 0;
        while off + 16 <= n {
            // SAFETY: off + 16 ≤ n, the length of all three slices.
            let (p1, p2, pb) = (
                a1.as_ptr().add(off),
                a2.as_ptr().add(off),
                b.as_ptr().add(off),
            );
            let (b0, b1) = (_mm256_loadu_ps(pb), _mm256_loadu_ps(pb.add(8)));
            s1a = _mm256_fmadd_ps(_mm256_loadu_ps(p1), b0, s1a);
            s1b = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(8)), b1, s1b);
            s2a = _mm256_fmadd_ps(_mm256_loadu_ps(p2), b0, s2a);
            s2b = _mm256_fmadd_ps(_mm256_loadu_ps(p2.add(8)), b1, s2b);
            off += 16;
        }
        if off + 8 <= n {
            // SAFETY: off + 8 ≤ n, the length of all three slices.
            let bv = _mm256_loadu_ps(b.as_ptr().add(off));
            s1a = _mm256_fmadd_ps(_mm256_loadu_ps(a1.as_ptr().add(off)), bv, s1a);
            s2a = _mm256_fmadd_ps(_mm256_loadu_ps(a2.as_ptr().add(off)), bv, s2a);
            off += 8;
        }
        let mut d1 = hsum(_mm256_add_ps(s1a, s1b));
        let mut d2 = hsum(_mm256_add_ps(s2a, s2b));
        for ((x1, x2), y) in a1[off..].iter().zip(&a2[off..]).zip(&b[off..]) {
            d1 = x1.mul_add(*y, d1);
            d2 = x2.mul_add(*y, d2);
        }
        (d1, d2)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy2(y: &mut [f32], c1: f32, x1: &[f32], c2: f32, x2: &[f32]) {
        let n = y.len().min(x1.len()).min(x2.len());
        let (v1, v2) = (_mm256_set1_ps(c1), _mm256_set1_ps(c2));
        let mut off = 0;
        while off + 8 <= n {
            // SAFETY: off + 8 ≤ n, the length of all three slices.
            let yp = y.as_mut_ptr().add(off);
            let acc = _mm256_fmadd_ps(
                v1,
                _mm256_loadu_ps(x1.as_ptr().add(off)),
                _mm256_loadu_ps(yp),
            );
            _mm256_storeu_ps(
                yp,
                _mm256_fmadd_ps(v2, _mm256_loadu_ps(x2.as_ptr().add(off)), acc),
            );
            off += 8;
        }
        for ((yk, a), b) in y[off..n].iter_mut().zip(&x1[off..]).zip(&x2[off..]) {
            *yk = c2.mul_add(*b, c1.mul_add(*a, *yk));
        }
    }

    /// `out = sign·M·v` as `Σ_j v_j·M[j, ·]` (valid because `M` is symmetric), holding a
    /// strip of `out` in registers so there are no horizontal sums at all.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gemv(m: &[f32], v: &[f32], out: &mut [f32], sign: f32) {
        let f = v.len().min(out.len());
        if m.len() < f * f {
            return;
        }
        let mut start = 0;
        // Eight independent FMA chains keep both FMA units busy despite their latency.
        while start + 64 <= f {
            gemv_strip::<8>(m, v, out, sign, start);
            start += 64;
        }
        while start + 32 <= f {
            gemv_strip::<4>(m, v, out, sign, start);
            start += 32;
        }
        while start + 8 <= f {
            gemv_strip::<1>(m, v, out, sign, start);
            start += 8;
        }
        for (i, o) in out.iter_mut().enumerate().take(f).skip(start) {
            *o = sign * dot(&m[i * f..(i + 1) * f], v);
        }
    }

    /// `out[start .. start + 8·W]` of [`gemv`]; the caller guarantees the strip fits.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gemv_strip<const W: usize>(
        m: &[f32],
        v: &[f32],
        out: &mut [f32],
        sign: f32,
        start: usize,
    ) {
        let f = v.len();
        let mut acc = [_mm256_setzero_ps(); W];
        for (j, &vj) in v.iter().enumerate() {
            let vj = _mm256_set1_ps(vj);
            // SAFETY: row j spans m[j·f .. j·f + f] and start + 8·W ≤ f.
            let row = m.as_ptr().add(j * f + start);
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(vj, _mm256_loadu_ps(row.add(8 * q)), *a);
            }
        }
        let s = _mm256_set1_ps(sign);
        for (q, a) in acc.iter().enumerate() {
            // SAFETY: start + 8·W ≤ f ≤ out.len().
            _mm256_storeu_ps(out.as_mut_ptr().add(start + 8 * q), _mm256_mul_ps(s, *a));
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        // Four accumulators hide the FMA latency; f = 64 is two trips through the loop.
        let mut acc = [_mm256_setzero_ps(); 4];
        let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for (j, s) in acc.iter_mut().enumerate() {
                // SAFETY: both chunks hold 32 floats, so 8 from offset 8·j ≤ 24 are in bounds.
                *s = _mm256_fmadd_ps(
                    _mm256_loadu_ps(x.as_ptr().add(8 * j)),
                    _mm256_loadu_ps(y.as_ptr().add(8 * j)),
                    *s,
                );
            }
        }
        let (ca, cb) = (ra.chunks_exact(8), rb.chunks_exact(8));
        let (ta, tb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            // SAFETY: both chunks hold exactly 8 floats.
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(x.as_ptr()),
                _mm256_loadu_ps(y.as_ptr()),
                acc[0],
            );
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        ta.iter()
            .zip(tb)
            .fold(hsum(s), |t, (x, y)| x.mul_add(*y, t))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let va = _mm256_set1_ps(a);
        let mut cy = y.chunks_exact_mut(8);
        let mut cx = x.chunks_exact(8);
        for (yc, xc) in (&mut cy).zip(&mut cx) {
            // SAFETY: both chunks hold exactly 8 floats.
            let v = _mm256_fmadd_ps(
                va,
                _mm256_loadu_ps(xc.as_ptr()),
                _mm256_loadu_ps(yc.as_ptr()),
            );
            _mm256_storeu_ps(yc.as_mut_ptr(), v);
        }
        for (yk, xk) in cy.into_remainder().iter_mut().zip(cx.remainder()) {
            *yk = a.mul_add(*xk, *yk);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn xpby(r: &[f32], beta: f32, p: &mut [f32]) {
        let vb = _mm256_set1_ps(beta);
        let mut cp = p.chunks_exact_mut(8);
        let mut cr = r.chunks_exact(8);
        for (pc, rc) in (&mut cp).zip(&mut cr) {
            // SAFETY: both chunks hold exactly 8 floats.
            let v = _mm256_fmadd_ps(
                vb,
                _mm256_loadu_ps(pc.as_ptr()),
                _mm256_loadu_ps(rc.as_ptr()),
            );
            _mm256_storeu_ps(pc.as_mut_ptr(), v);
        }
        for (pk, rk) in cp.into_remainder().iter_mut().zip(cr.remainder()) {
            *pk = beta.mul_add(*pk, *rk);
        }
    }
}

/// Fill `out[i] = item_i · u` for every item.
fn score_items(items: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86::Avx2Fma::detect() {
        // SAFETY: `k` exists only if the CPU supports AVX2 and FMA.
        unsafe { x86::score_items(k, items, u, out) };
        return;
    }
    score_items_with(Portable, items, u, out);
}

#[inline(always)]
fn score_items_with<K: Kernel>(k: K, items: &[f32], u: &[f32], out: &mut [f32]) {
    if u.is_empty() {
        out.fill(0.0);
        return;
    }
    for (o, v) in out.iter_mut().zip(items.chunks_exact(u.len())) {
        *o = k.dot(v, u);
    }
}

/// Best first; ties broken by item index so rankings are deterministic.
fn rank_order(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Keep the `k` best of `cands`, sorted best first, in O(n + k log k).
fn select_top_k(cands: &mut Vec<(u32, f32)>, k: usize) {
    if k == 0 {
        cands.clear();
        return;
    }
    if cands.len() > k {
        cands.select_nth_unstable_by(k - 1, rank_order);
        cands.truncate(k);
    }
    cands.sort_unstable_by(rank_order);
}

/// Collect `(item, score)` for every item not in the sorted `excluded` list; NaN scores
/// (only possible from a degenerate fit) are skipped rather than ranked first.
fn candidates(scores: impl Iterator<Item = f32>, excluded: &[u32], out: &mut Vec<(u32, f32)>) {
    out.clear();
    let mut skip = excluded.iter().peekable();
    for (i, s) in scores.enumerate() {
        let i = i as u32;
        while skip.next_if(|&&e| e < i).is_some() {}
        if skip.next_if_eq(&&i).is_some() || s.is_nan() {
            continue;
        }
        out.push((i, s));
    }
}

/// A fitted ALS model: one factor row per user and per movie, plus what each user
/// already interacted with so it is not recommended back to them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "AlsModelRepr")]
pub struct AlsModel {
    // Field order is the wire format (bincode is positional): keep it equal to `AlsModelRepr`.
    users: Vec<UserId>,
    items: Vec<MovieId>,
    user_factors: Array2<f32>,
    item_factors: Array2<f32>,
    seen_indptr: Vec<usize>,
    seen_indices: Vec<u32>,
    filter_seen: bool,
    #[serde(skip)]
    user_index: HashMap<UserId, u32>,
    #[serde(skip)]
    item_index: HashMap<MovieId, u32>,
}

/// The serialised fields only; deserialising goes through it so the lookup maps are
/// rebuilt and the shapes checked before a model can be used.
#[derive(Deserialize)]
struct AlsModelRepr {
    users: Vec<UserId>,
    items: Vec<MovieId>,
    user_factors: Array2<f32>,
    item_factors: Array2<f32>,
    seen_indptr: Vec<usize>,
    seen_indices: Vec<u32>,
    filter_seen: bool,
}

impl TryFrom<AlsModelRepr> for AlsModel {
    type Error = ValidationError;

    fn try_from(repr: AlsModelRepr) -> Result<Self, Self::Error> {
        Self::from_repr(repr)
    }
}

impl AlsModel {
    /// Check every invariant the serving code indexes by, so a corrupt artefact fails
    /// at load time instead of panicking mid-request.
    fn from_repr(repr: AlsModelRepr) -> Result<Self, ValidationError> {
        let AlsModelRepr {
            users,
            items,
            user_factors,
            item_factors,
            seen_indptr,
            seen_indices,
            filter_seen,
        } = repr;
        let bad = |field: &str, msg: &str| Err(ValidationError::new(field, msg));
        if users.len() > u32::MAX as usize || items.len() > u32::MAX as usize {
            return bad("users", "too many rows for u32 indices");
        }
        if user_factors.nrows() != users.len() {
            return bad("user_factors", "row count differs from users");
        }
        if item_factors.nrows() != items.len() {
            return bad("item_factors", "row count differs from items");
        }
        if user_factors.ncols() != item_factors.ncols() {
            return bad("item_factors", "factor count differs from user_factors");
        }
        if seen_indptr.len() != users.len() + 1
            || seen_indptr.first() != Some(&0)
            || seen_indptr.last() != Some(&seen_indices.len())
            || seen_indptr.windows(2).any(|w| w[0] > w[1])
        {
            return bad("seen_indptr", "not a valid row pointer for users");
        }
        for w in seen_indptr.windows(2) {
            let row = &seen_indices[w[0]..w[1]];
            if row.windows(2).any(|p| p[0] >= p[1])
                || row.last().is_some_and(|&i| i as usize >= items.len())
            {
                return bad(
                    "seen_indices",
                    "rows must be strictly increasing item indices",
                );
            }
        }
        let model = Self::assemble(AlsModelRepr {
            users,
            items,
            user_factors,
            item_factors,
            seen_indptr,
            seen_indices,
            filter_seen,
        });
        if model.user_index.len() != model.users.len() {
            return bad("users", "duplicate user");
        }
        if model.item_index.len() != model.items.len() {
            return bad("items", "duplicate movie");
        }
        Ok(model)
    }

    /// Build the lookup maps and normalise the layout; the shapes must already agree.
    fn assemble(repr: AlsModelRepr) -> Self {
        let AlsModelRepr {
            users,
            items,
            mut user_factors,
            mut item_factors,
            seen_indptr,
            seen_indices,
            filter_seen,
        } = repr;
        // The hot loops take contiguous slices; a foreign layout is copied once here.
        if !user_factors.is_standard_layout() {
            user_factors = user_factors.as_standard_layout().into_owned();
        }
        if !item_factors.is_standard_layout() {
            item_factors = item_factors.as_standard_layout().into_owned();
        }
        let user_index = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.clone(), i as u32))
            .collect();
        let item_index = items
            .iter()
            .enumerate()
            .map(|(i, m)| (*m, i as u32))
            .collect();
        Self {
            users,
            items,
            user_factors,
            item_factors,
            seen_indptr,
            seen_indices,
            filter_seen,
            user_index,
            item_index,
        }
    }

    /// Users in row order, so `user_factors().row(i)` belongs to `users()[i]`.
    pub fn users(&self) -> &[UserId] {
        &self.users
    }

    /// Movies in row order, so `item_factors().row(i)` belongs to `items()[i]`.
    pub fn items(&self) -> &[MovieId] {
        &self.items
    }

    /// User factors (`n_users × factors`), for analysis and export.
    pub fn user_factors(&self) -> &Array2<f32> {
        &self.user_factors
    }

    /// Item factors (`n_items × factors`), for analysis, export and item similarity.
    pub fn item_factors(&self) -> &Array2<f32> {
        &self.item_factors
    }

    /// Latent dimensionality the model was fitted with.
    pub fn factors(&self) -> usize {
        self.item_factors.ncols()
    }

    /// Dense row of a user, if the model was trained on them.
    pub fn user_idx(&self, user: &UserId) -> Option<u32> {
        self.user_index.get(user).copied()
    }

    /// Movies the user interacted with in training, the ones filtered by default.
    pub fn seen(&self, user: &UserId) -> Vec<MovieId> {
        self.user_idx(user)
            .map(|u| {
                self.seen_row(u as usize)
                    .iter()
                    .map(|&i| self.items[i as usize])
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether training items are withheld from recommendations (the default).
    pub fn filter_seen(&self) -> bool {
        self.filter_seen
    }

    /// Allow or forbid re-recommending training items, e.g. for "watch again" rails.
    pub fn set_filter_seen(&mut self, filter: bool) {
        self.filter_seen = filter;
    }

    /// Predicted preference of `user` for `movie`, for evaluation metrics such as AUC.
    pub fn score(&self, user: &UserId, movie: MovieId) -> Option<f32> {
        let u = self.user_idx(user)? as usize;
        let i = *self.item_index.get(&movie)? as usize;
        let (us, is) = (self.user_factors.as_slice()?, self.item_factors.as_slice()?);
        let f = self.factors();
        Some(
            us[u * f..(u + 1) * f]
                .iter()
                .zip(&is[i * f..(i + 1) * f])
                .map(|(a, b)| a * b)
                .sum(),
        )
    }

    fn seen_row(&self, u: usize) -> &[u32] {
        &self.seen_indices[self.seen_indptr[u]..self.seen_indptr[u + 1]]
    }

    /// Top `n` for every user in row order, scoring users in blocks with one GEMM each
    /// so precomputing lists for a whole population is far cheaper than per-user calls.
    pub fn top_n_all(&self, n: usize) -> TopNAll<'_> {
        TopNAll {
            model: self,
            n,
            next_user: 0,
            block_start: 0,
            block: Array2::zeros((0, self.items.len())),
            excluded: Vec::new(),
            cands: Vec::new(),
        }
    }
}

/// Streaming iterator behind [`AlsModel::top_n_all`]; holds one block of scores at a time.
pub struct TopNAll<'a> {
    model: &'a AlsModel,
    n: usize,
    next_user: usize,
    block_start: usize,
    block: Array2<f32>,
    excluded: Vec<u32>,
    cands: Vec<(u32, f32)>,
}

impl<'a> Iterator for TopNAll<'a> {
    type Item = (&'a UserId, Vec<ScoredItem>);

    fn next(&mut self) -> Option<Self::Item> {
        let model = self.model;
        let user = model.users.get(self.next_user)?;
        if self.next_user >= self.block_start + self.block.nrows() {
            let end = (self.next_user + SCORE_BLOCK).min(model.users.len());
            let rows = end - self.next_user;
            if self.block.nrows() != rows {
                self.block = Array2::zeros((rows, model.items.len()));
            }
            let users = model.user_factors.slice(s![self.next_user..end, ..]);
            general_mat_mul(1.0, &users, &model.item_factors.t(), 0.0, &mut self.block);
            self.block_start = self.next_user;
        }
        let u = self.next_user;
        self.next_user += 1;

        self.excluded.clear();
        if model.filter_seen {
            self.excluded.extend_from_slice(model.seen_row(u));
        }
        let scores = self.block.row(u - self.block_start);
        candidates(scores.iter().copied(), &self.excluded, &mut self.cands);
        select_top_k(&mut self.cands, self.n);
        let list = self
            .cands
            .iter()
            .map(|&(i, score)| ScoredItem {
                movie_id: model.items[i as usize],
                score,
            })
            .collect();
        Some((user, list))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.model.users.len() - self.next_user;
        (left, Some(left))
    }
}

impl Recommender for AlsModel {
    /// Unknown users get nothing: ALS has no opinion about them, callers fall back.
    fn recommend(&self, user: &UserId, k: usize, exclude: &HashSet<MovieId>) -> Vec<ScoredItem> {
        let Some(u) = self.user_idx(user) else {
            return Vec::new();
        };
        let (Some(us), Some(is)) = (self.user_factors.as_slice(), self.item_factors.as_slice())
        else {
            // Unreachable: construction normalises both arrays to standard layout.
            return Vec::new();
        };
        if k == 0 {
            return Vec::new();
        }
        let f = self.factors();
        let mut scores = vec![0f32; self.items.len()];
        score_items(is, &us[u as usize * f..(u as usize + 1) * f], &mut scores);

        let mut excluded: Vec<u32> = exclude
            .iter()
            .filter_map(|m| self.item_index.get(m).copied())
            .collect();
        if self.filter_seen {
            excluded.extend_from_slice(self.seen_row(u as usize));
        }
        excluded.sort_unstable();
        excluded.dedup();

        let mut cands = Vec::with_capacity(self.items.len().saturating_sub(excluded.len()));
        candidates(scores.into_iter(), &excluded, &mut cands);
        select_top_k(&mut cands, k);
        cands
            .into_iter()
            .map(|(i, score)| ScoredItem {
                movie_id: self.items[i as usize],
                score,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: usize = 6;

    fn uid(u: usize) -> UserId {
        UserId::parse(format!("u{u}")).unwrap()
    }

    fn mid(i: usize) -> MovieId {
        MovieId::parse(i as i64 + 1).unwrap()
    }

    /// Two taste groups of `GROUP` users, each watching every movie of its own block of
    /// `GROUP` movies except one held out (movie `u % GROUP` of the block).
    fn block_dataset() -> (Dataset, Vec<MovieId>) {
        let mut data = Dataset::new();
        let mut held_out = Vec::new();
        for u in 0..2 * GROUP {
            let block = u / GROUP;
            let hold = block * GROUP + u % GROUP;
            held_out.push(mid(hold));
            for i in block * GROUP..(block + 1) * GROUP {
                if i != hold {
                    let kind = if (u + i) % 3 == 0 {
                        InteractionKind::Like
                    } else {
                        InteractionKind::View
                    };
                    data.push(&uid(u), mid(i), kind, 0);
                }
            }
        }
        (data, held_out)
    }

    fn small_params(solver: Solver) -> AlsParams {
        AlsParams {
            // Wider than one 16-lane chunk, so both the unrolled and the tail paths run.
            factors: 20,
            regularization: 0.1,
            alpha: 10.0,
            iterations: 10,
            solver,
            threads: 1,
            ..AlsParams::default()
        }
    }

    fn all_recs(model: &AlsModel, n_users: usize, k: usize) -> Vec<Vec<ScoredItem>> {
        (0..n_users)
            .map(|u| model.recommend(&uid(u), k, &HashSet::new()))
            .collect()
    }

    #[test]
    fn held_out_item_of_own_block_ranks_first() {
        let (data, held_out) = block_dataset();
        // Rank 2 is the truth; a wide model needs a stronger penalty not to memorise
        // the held-out zeros of a 12 × 12 matrix.
        for (solver, factors, regularization) in [
            (Solver::Cg, 2, 0.1),
            (Solver::Cholesky, 2, 0.1),
            (Solver::Cg, 20, 5.0),
            (Solver::Cholesky, 20, 5.0),
        ] {
            let params = AlsParams {
                factors,
                regularization,
                ..small_params(solver)
            };
            let model = fit(&data, &params);
            for (u, &hold) in held_out.iter().enumerate() {
                let recs = model.recommend(&uid(u), 3, &HashSet::new());
                assert_eq!(recs.len(), 3);
                assert_eq!(recs[0].movie_id, hold, "{solver:?} user {u}: {recs:?}");
                let other_block = (1 - u / GROUP) * GROUP;
                let best_other = (other_block..other_block + GROUP)
                    .map(|i| model.score(&uid(u), mid(i)).unwrap())
                    .fold(f32::NEG_INFINITY, f32::max);
                let held = model.score(&uid(u), hold).unwrap();
                assert!(
                    held > best_other + 0.5,
                    "{solver:?} user {u}: {held} vs {best_other}"
                );
            }
        }
    }

    #[test]
    fn cg_converges_to_the_exact_solution() {
        let (data, _) = block_dataset();
        let exact = fit(&data, &small_params(Solver::Cholesky));
        let cg = fit(
            &data,
            &AlsParams {
                cg_steps: 40,
                ..small_params(Solver::Cg)
            },
        );
        for (a, b) in [
            (exact.user_factors(), cg.user_factors()),
            (exact.item_factors(), cg.item_factors()),
        ] {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = (a - b).iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(diff < 1e-2 * scale, "diff {diff} scale {scale}");
        }
    }

    #[test]
    fn fit_is_deterministic_for_a_seed_and_any_thread_count() {
        let (data, _) = block_dataset();
        let params = small_params(Solver::Cg);
        let a = fit(&data, &params);
        let b = fit(
            &data,
            &AlsParams {
                threads: 3,
                ..params.clone()
            },
        );
        assert_eq!(a.user_factors(), b.user_factors());
        assert_eq!(a.item_factors(), b.item_factors());
        let c = fit(&data, &AlsParams { seed: 7, ..params });
        assert_ne!(a.user_factors(), c.user_factors());
    }

    #[test]
    fn bincode_round_trip_recommends_identically() {
        let (data, _) = block_dataset();
        let model = fit(&data, &small_params(Solver::Cg));
        let bytes = bincode::serde::encode_to_vec(&model, bincode::config::standard()).unwrap();
        let (back, _): (AlsModel, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back.user_factors(), model.user_factors());
        assert_eq!(back.seen(&uid(0)), model.seen(&uid(0)));
        let n = data.n_users();
        assert_eq!(all_recs(&back, n, 5), all_recs(&model, n, 5));
        let json = serde_json::to_string(&model).unwrap();
        let back: AlsModel = serde_json::from_str(&json).unwrap();
        assert_eq!(all_recs(&back, n, 5), all_recs(&model, n, 5));
    }

    #[test]
    fn corrupt_artefacts_are_rejected_on_load() {
        let (data, _) = block_dataset();
        let model = fit(&data, &small_params(Solver::Cg));
        let repr = || AlsModelRepr {
            users: model.users.clone(),
            items: model.items.clone(),
            user_factors: model.user_factors.clone(),
            item_factors: model.item_factors.clone(),
            seen_indptr: model.seen_indptr.clone(),
            seen_indices: model.seen_indices.clone(),
            filter_seen: true,
        };
        assert!(AlsModel::try_from(repr()).is_ok());
        let mut r = repr();
        r.items.pop();
        assert_eq!(AlsModel::try_from(r).unwrap_err().field, "item_factors");
        let mut r = repr();
        r.seen_indices[0] = 10_000;
        assert_eq!(AlsModel::try_from(r).unwrap_err().field, "seen_indices");
        let mut r = repr();
        r.users[1] = r.users[0].clone();
        assert_eq!(AlsModel::try_from(r).unwrap_err().field, "users");
        let mut r = repr();
        r.seen_indptr.pop();
        assert_eq!(AlsModel::try_from(r).unwrap_err().field, "seen_indptr");
    }

    #[test]
    fn unknown_user_and_zero_k_get_nothing() {
        let (data, _) = block_dataset();
        let model = fit(&data, &small_params(Solver::Cg));
        assert!(model
            .recommend(&UserId::parse("stranger").unwrap(), 10, &HashSet::new())
            .is_empty());
        assert!(model.recommend(&uid(0), 0, &HashSet::new()).is_empty());
        assert_eq!(
            model.score(&UserId::parse("stranger").unwrap(), mid(0)),
            None
        );
    }

    #[test]
    fn exclusions_and_seen_filter_are_honoured() {
        let (data, held_out) = block_dataset();
        let mut model = fit(&data, &small_params(Solver::Cg));
        let user = uid(0);
        let all = model.recommend(&user, 100, &HashSet::new());
        // Only the held-out movie and the other block remain unseen.
        assert_eq!(all.len(), 1 + GROUP);
        assert!(all.windows(2).all(|w| w[0].score >= w[1].score));
        let exclude: HashSet<_> = [held_out[0], mid(GROUP)].into_iter().collect();
        let recs = model.recommend(&user, 100, &exclude);
        assert_eq!(recs.len(), GROUP - 1);
        assert!(recs.iter().all(|r| !exclude.contains(&r.movie_id)));

        model.set_filter_seen(false);
        let recs = model.recommend(&user, 100, &HashSet::new());
        assert_eq!(recs.len(), 2 * GROUP);
        let seen = model.seen(&user);
        assert_eq!(seen.len(), GROUP - 1);
        // Seen movies are the strongest signals, so they lead once allowed.
        assert!(recs[..GROUP - 1].iter().all(|r| seen.contains(&r.movie_id)));
    }

    #[test]
    fn top_n_all_matches_per_user_recommend() {
        let (data, _) = block_dataset();
        let model = fit(&data, &small_params(Solver::Cg));
        let batch: Vec<_> = model.top_n_all(4).collect();
        assert_eq!(batch.len(), data.n_users());
        for (u, (user, list)) in batch.into_iter().enumerate() {
            assert_eq!(user, &uid(u));
            let single = model.recommend(user, 4, &HashSet::new());
            let ids = |l: &[ScoredItem]| l.iter().map(|r| r.movie_id).collect::<Vec<_>>();
            assert_eq!(ids(&list), ids(&single));
            for (a, b) in list.iter().zip(&single) {
                assert!((a.score - b.score).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn duplicate_pairs_add_up_and_bad_indices_are_ignored() {
        let mut data = Dataset::new();
        data.push(&uid(0), mid(0), InteractionKind::View, 0);
        data.push(&uid(0), mid(1), InteractionKind::View, 0);
        data.push(&uid(0), mid(0), InteractionKind::Like, 1);
        data.push(&uid(0), mid(0), InteractionKind::View, 2);
        data.interactions.push(crate::recommend::Interaction {
            user: 0,
            item: 99,
            kind: InteractionKind::Like,
            ts: 0,
        });
        let params = AlsParams {
            alpha: 10.0,
            ..AlsParams::default()
        };
        let csr = Csr::user_items(&data, &params);
        assert_eq!(csr.ptr, vec![0, 2]);
        assert_eq!(csr.idx, vec![0, 1]);
        assert_eq!(csr.val, vec![40.0, 10.0]);
        let t = csr.transpose(2);
        assert_eq!(t.ptr, vec![0, 1, 2]);
        assert_eq!(t.val, vec![40.0, 10.0]);
    }

    #[test]
    fn params_validate_and_default_from_partial_config() {
        assert!(AlsParams::default().validate().is_ok());
        let p: AlsParams =
            serde_json::from_str(r#"{"factors": 32, "solver": "cholesky"}"#).unwrap();
        assert_eq!(
            (p.factors, p.solver, p.iterations),
            (32, Solver::Cholesky, 15)
        );
        let bad = AlsParams {
            alpha: -1.0,
            ..AlsParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "alpha");
        let bad = AlsParams {
            factors: 0,
            ..AlsParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "factors");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_kernels_agree_with_portable_ones() {
        let Some(fast) = x86::Avx2Fma::detect() else {
            return;
        };
        let mut rng = StdRng::seed_from_u64(3);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()));
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 128] {
            let mut v = |len: usize| {
                (0..len)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect::<Vec<_>>()
            };
            let (a, b, c) = (v(n), v(n), v(n));
            assert!(close(fast.dot(&a, &b), Portable.dot(&a, &b)), "dot n={n}");
            let (f1, f2) = fast.dot2(&a, &c, &b);
            let (p1, p2) = Portable.dot2(&a, &c, &b);
            assert!(close(f1, p1) && close(f2, p2), "dot2 n={n}");

            let (mut yf, mut yp) = (c.clone(), c.clone());
            fast.axpy2(&mut yf, 0.5, &a, -2.0, &b);
            Portable.axpy2(&mut yp, 0.5, &a, -2.0, &b);
            fast.axpy(&mut yf, 1.5, &a);
            Portable.axpy(&mut yp, 1.5, &a);
            fast.xpby(&b, 0.25, &mut yf);
            Portable.xpby(&b, 0.25, &mut yp);
            assert!(yf.iter().zip(&yp).all(|(x, y)| close(*x, *y)), "axpy n={n}");

            let half = v(n * n);
            let mut sym = vec![0f32; n * n];
            for i in 0..n {
                for j in 0..n {
                    sym[i * n + j] = half[i * n + j] + half[j * n + i];
                }
            }
            let (mut of, mut op) = (vec![0f32; n], vec![0f32; n]);
            fast.gemv(&sym, &a, &mut of, -1.0);
            Portable.gemv(&sym, &a, &mut op, -1.0);
            assert!(of.iter().zip(&op).all(|(x, y)| close(*x, *y)), "gemv n={n}");
        }
    }

    #[test]
    fn balanced_bounds_cover_all_rows_once() {
        let indptr = [0, 100, 100, 101, 300, 300, 301];
        for parts in [1, 2, 3, 8, 50] {
            let b = balanced_bounds(&indptr, 4, parts);
            assert_eq!((b[0], *b.last().unwrap()), (0, 6));
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
        assert_eq!(balanced_bounds(&[0], 4, 4), vec![0, 0]);
    }

    #[test]
    fn zero_factors_do_not_panic() {
        let (data, _) = block_dataset();
        let model = fit(
            &data,
            &AlsParams {
                factors: 0,
                ..small_params(Solver::Cg)
            },
        );
        let recs = model.recommend(&uid(0), 3, &HashSet::new());
        assert_eq!(recs.len(), 3);
        assert!(recs.iter().all(|r| r.score == 0.0));
        assert_eq!(model.top_n_all(2).count(), data.n_users());
    }

    #[test]
    fn empty_dataset_fits_an_empty_model() {
        let model = fit(&Dataset::new(), &AlsParams::default());
        assert!(model.users().is_empty());
        assert_eq!(model.top_n_all(5).count(), 0);
    }

    /// A binary matrix of rank exactly 2, with overlap: users of type A watch
    /// movies 0..4, type B movies 4..8, type C everything (C = A + B). With as
    /// many factors as the rank and almost no penalty, the exact solver must
    /// give back the preferences themselves: ~1 where watched, ~0 elsewhere.
    #[test]
    fn reconstructs_a_rank_two_matrix() {
        let (n_items, per_type) = (8, 4);
        let watches = |u: usize, i: usize| match u / per_type {
            0 => i < 4,
            1 => i >= 4,
            _ => true,
        };
        let mut data = Dataset::new();
        for u in 0..3 * per_type {
            for i in 0..n_items {
                if watches(u, i) {
                    data.push(&uid(u), mid(i), InteractionKind::View, 0);
                }
            }
        }
        let model = fit(
            &data,
            &AlsParams {
                factors: 2,
                regularization: 1e-4,
                alpha: 4.0,
                iterations: 50,
                solver: Solver::Cholesky,
                threads: 1,
                ..AlsParams::default()
            },
        );
        for u in 0..3 * per_type {
            for i in 0..n_items {
                let want = if watches(u, i) { 1.0 } else { 0.0 };
                let got = model.score(&uid(u), mid(i)).unwrap();
                assert!(
                    (got - want).abs() < 0.05,
                    "user {u} movie {i}: {got} vs {want}"
                );
            }
        }
    }

    /// Timing on synthetic power-law data; run with
    /// `cargo test --release -p domain als_timing -- --ignored --nocapture`
    /// (`ALS_BENCH_SCALE=10` gives ~200k users × 20k items × 10M interactions).
    #[test]
    #[ignore]
    fn als_timing() {
        use rand_distr::{Distribution, Zipf};
        let scale: usize = std::env::var("ALS_BENCH_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        // Environment knobs: ALS_BENCH_THREADS (default 0 = all cores), ALS_BENCH_FACTORS.
        let (n_users, n_items, nnz) = (20_000 * scale, 2_000 * scale, 1_000_000 * scale);
        let mut rng = StdRng::seed_from_u64(1);
        let zipf = Zipf::new(n_items as f64, 0.9).unwrap();
        let mut data = Dataset::new();
        data.users = (0..n_users).map(uid).collect();
        data.items = (0..n_items).map(mid).collect();
        data.interactions = (0..nnz)
            .map(|_| crate::recommend::Interaction {
                user: rng.random_range(0..n_users as u32),
                item: zipf.sample(&mut rng) as u32 - 1,
                kind: if rng.random::<f32>() < 0.2 {
                    InteractionKind::Like
                } else {
                    InteractionKind::View
                },
                ts: 0,
            })
            .collect();
        data.reindex();
        let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse().ok());
        let threads = env("ALS_BENCH_THREADS").unwrap_or(0);
        let factors = env("ALS_BENCH_FACTORS").unwrap_or(64);
        for solver in [Solver::Cg] {
            let params = AlsParams {
                solver,
                threads,
                factors,
                ..AlsParams::default()
            };
            // This thread's CPU time (Linux only): wall time is noisy on shared machines.
            let cpu_ms = || {
                std::fs::read_to_string("/proc/thread-self/schedstat")
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .map_or(0, |ns| ns / 1_000_000)
            };
            let (t, c) = (std::time::Instant::now(), cpu_ms());
            let model = fit(&data, &params);
            eprintln!(
                "{solver:?} threads={threads}: {n_users}×{n_items}, {nnz} nnz, f={}, {} it: \
                 {:?} wall, {} ms CPU on the calling thread",
                params.factors,
                params.iterations,
                t.elapsed(),
                cpu_ms() - c
            );
            let t = std::time::Instant::now();
            let lists = model.top_n_all(20).take(10_000).count();
            eprintln!("top_n_all: {lists} users in {:?}", t.elapsed());
            let t = std::time::Instant::now();
            for u in 0..1000 {
                std::hint::black_box(model.recommend(&uid(u), 20, &HashSet::new()));
            }
            eprintln!("recommend: 1000 users in {:?}", t.elapsed());
        }
    }
}
