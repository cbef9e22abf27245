//! Lane-parallel versions of the scale searches: lane `k` is an independent block (or
//! sub-block), and every lane performs exactly the scalar reference's operations
//! (`super::super::search`) in the same order, so results are bit-identical. Inputs are
//! lane-major: value `i` of lane `k` is at `i * V::N + k`.

#![allow(clippy::missing_safety_doc)]

use super::super::iq4::{IQ4_VALUES, NTRY};
use super::super::search::{AffineSearch, GROUP_MAX_EPS};
use super::vector::Lanes;

/// The signed value of largest magnitude per lane (first one on ties) and that magnitude.
#[inline(always)]
unsafe fn signed_absmax<V: Lanes>(xt: &[f32], n: usize) -> (V, V) {
    let mut max = V::splat(0.0);
    let mut amax = V::splat(0.0);
    for i in 0..n {
        let x = V::load(&xt[i * V::N..]);
        let ax = x.abs();
        let bigger = amax.lt(ax);
        amax = V::select(bigger, ax, amax);
        max = V::select(bigger, x, max);
    }
    (max, amax)
}

#[inline(always)]
unsafe fn neg<V: Lanes>(v: V) -> V {
    // Multiplying by -1 flips the sign bit exactly, zeros included, like C's unary minus.
    V::splat(-1.0).mul(v)
}

#[inline(always)]
unsafe fn error_term<V: Lanes>(diff: V, use_mad: bool) -> V {
    if use_mad {
        diff.abs()
    } else {
        diff.mul(diff)
    }
}

/// `make_qkx_quants` on `V::N` lanes of `n` values; levels (0..=nmax) to `lv`, scales and mins
/// (the offset subtracted) to `scale_out` / `min_out`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn affine<V: Lanes>(
    xt: &[f32],
    wt: &[f32],
    n: usize,
    p: AffineSearch,
    lv: &mut [i32],
    scale_out: &mut [f32],
    min_out: &mut [f32],
) {
    let nl = V::N;
    let zero = V::splat(0.0);
    let x0 = V::load(xt);
    let mut min = x0;
    let mut max = x0;
    let mut sum_w = V::load(wt);
    let mut sum_x = sum_w.mul(x0);
    for i in 1..n {
        let x = V::load(&xt[i * nl..]);
        let w = V::load(&wt[i * nl..]);
        min = V::select(x.lt(min), x, min);
        max = V::select(max.lt(x), x, max);
        sum_w = sum_w.add(w);
        sum_x = sum_x.add(w.mul(x));
    }
    min = V::select(zero.lt(min), zero, min);
    let flat = max.le(min);
    let flat_min = min;
    let nmaxf = p.nmax as f32;
    let mut iscale = V::splat(nmaxf).div(max.sub(min));
    let mut scale = V::splat(1.0).div(iscale);
    let mut best = zero;
    for i in 0..n {
        let x = V::load(&xt[i * nl..]);
        let w = V::load(&wt[i * nl..]);
        let l = V::clamp_i(iscale.mul(x.sub(min)).nearest_int(), 0, p.nmax);
        V::store_i(l, &mut lv[i * nl..]);
        let diff = scale.mul(V::to_f(l)).add(min).sub(x);
        best = best.add(w.mul(error_term(diff, p.use_mad)));
    }
    let mut aux = [0i32; 32 * 16];
    for is in 0..(p.nstep + 1).max(0) {
        if p.nstep < 1 {
            break; // ggml returns the first guess when there is no search
        }
        iscale = V::splat(p.rmin + p.rdelta * is as f32 + nmaxf).div(max.sub(min));
        let mut sum_l = zero;
        let mut sum_l2 = zero;
        let mut sum_xl = zero;
        for i in 0..n {
            let x = V::load(&xt[i * nl..]);
            let w = V::load(&wt[i * nl..]);
            let l = V::clamp_i(iscale.mul(x.sub(min)).nearest_int(), 0, p.nmax);
            V::store_i(l, &mut aux[i * nl..]);
            let lf = V::to_f(l);
            let wl = w.mul(lf);
            sum_l = sum_l.add(wl);
            sum_l2 = sum_l2.add(wl.mul(lf));
            sum_xl = sum_xl.add(wl.mul(x));
        }
        let det = sum_w.mul(sum_l2).sub(sum_l.mul(sum_l));
        let solvable = zero.lt(det);
        let mut this_scale = sum_w.mul(sum_xl).sub(sum_x.mul(sum_l)).div(det);
        let mut this_min = sum_l2.mul(sum_x).sub(sum_l.mul(sum_xl)).div(det);
        let positive_min = zero.lt(this_min);
        this_min = V::select(positive_min, zero, this_min);
        this_scale = V::select(positive_min, sum_xl.div(sum_l2), this_scale);
        let mut cur = zero;
        for i in 0..n {
            let x = V::load(&xt[i * nl..]);
            let w = V::load(&wt[i * nl..]);
            let l = V::to_f(V::load_i(&aux[i * nl..]));
            let diff = this_scale.mul(l).add(this_min).sub(x);
            cur = cur.add(w.mul(error_term(diff, p.use_mad)));
        }
        let better = V::and(solvable, cur.lt(best));
        if V::any(better) {
            for i in 0..n {
                let l = V::select_i(better, V::load_i(&aux[i * nl..]), V::load_i(&lv[i * nl..]));
                V::store_i(l, &mut lv[i * nl..]);
            }
            best = V::select(better, cur, best);
            scale = V::select(better, this_scale, scale);
            min = V::select(better, this_min, min);
        }
    }
    if V::any(flat) {
        let zero_i = V::clamp_i(zero.nearest_int(), 0, 0);
        for i in 0..n {
            let l = V::select_i(flat, zero_i, V::load_i(&lv[i * nl..]));
            V::store_i(l, &mut lv[i * nl..]);
        }
    }
    V::select(flat, zero, scale).store(scale_out);
    neg(V::select(flat, flat_min, min)).store(min_out);
}

/// `make_qx_quants` (rmse_type 1) on `V::N` lanes; weights `wt` or `x^2`. Levels `l + nmax`.
#[inline(always)]
pub unsafe fn qx<V: Lanes>(
    xt: &[f32],
    wt: Option<&[f32]>,
    n: usize,
    nmax: i32,
    lv: &mut [i32],
    scale_out: &mut [f32],
) {
    let nl = V::N;
    let zero = V::splat(0.0);
    let (max, amax) = signed_absmax::<V>(xt, n);
    let nmaxf = nmax as f32;
    let weight = |i: usize, x: V| match wt {
        Some(w) => V::load(&w[i * nl..]),
        None => x.mul(x),
    };
    let mut iscale = V::splat(-nmaxf).div(max);
    let mut sumlx = zero;
    let mut suml2 = zero;
    for i in 0..n {
        let x = V::load(&xt[i * nl..]);
        let l = V::clamp_i(iscale.mul(x).nearest_int(), -nmax, nmax - 1);
        V::store_i(l, &mut lv[i * nl..]);
        let w = weight(i, x);
        let lf = V::to_f(l);
        sumlx = sumlx.add(w.mul(x).mul(lf));
        suml2 = suml2.add(w.mul(lf).mul(lf));
    }
    let mut scale = V::select(suml2.ne(zero), sumlx.div(suml2), zero);
    let mut best = scale.mul(sumlx);
    let mut aux = [0i32; 32 * 16];
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = V::splat(-(nmaxf + 0.1 * is as f32)).div(max);
        sumlx = zero;
        suml2 = zero;
        for i in 0..n {
            let x = V::load(&xt[i * nl..]);
            let l = V::clamp_i(iscale.mul(x).nearest_int(), -nmax, nmax - 1);
            V::store_i(l, &mut aux[i * nl..]);
            let w = weight(i, x);
            let lf = V::to_f(l);
            sumlx = sumlx.add(w.mul(x).mul(lf));
            suml2 = suml2.add(w.mul(lf).mul(lf));
        }
        let better = V::and(zero.lt(suml2), best.mul(suml2).lt(sumlx.mul(sumlx)));
        if V::any(better) {
            for i in 0..n {
                let l = V::select_i(better, V::load_i(&aux[i * nl..]), V::load_i(&lv[i * nl..]));
                V::store_i(l, &mut lv[i * nl..]);
            }
            let new_scale = sumlx.div(suml2);
            scale = V::select(better, new_scale, scale);
            best = V::select(better, new_scale.mul(sumlx), best);
        }
    }
    let all_zero = amax.lt(V::splat(GROUP_MAX_EPS));
    let zero_i = V::clamp_i(zero.nearest_int(), 0, 0);
    for i in 0..n {
        let l = V::add_i(V::load_i(&lv[i * nl..]), nmax);
        V::store_i(V::select_i(all_zero, zero_i, l), &mut lv[i * nl..]);
    }
    V::select(all_zero, zero, scale).store(scale_out);
}

/// `make_q3_quants` with refinement on `V::N` lanes. Levels `l + nmax`.
#[inline(always)]
pub unsafe fn q3<V: Lanes>(xt: &[f32], n: usize, nmax: i32, lv: &mut [i32], scale_out: &mut [f32]) {
    let nl = V::N;
    let zero = V::splat(0.0);
    let (max, amax) = signed_absmax::<V>(xt, n);
    let iscale = V::splat(-(nmax as f32)).div(max);
    let mut sumlx = zero;
    let mut suml2 = zero;
    for i in 0..n {
        let x = V::load(&xt[i * nl..]);
        let l = V::clamp_i(iscale.mul(x).nearest_int(), -nmax, nmax - 1);
        V::store_i(l, &mut lv[i * nl..]);
        let w = x.mul(x);
        let lf = V::to_f(l);
        sumlx = sumlx.add(w.mul(x).mul(lf));
        suml2 = suml2.add(w.mul(lf).mul(lf));
    }
    // A pass without changes leaves the state as it was, so continuing while any lane still
    // changes gives every lane what its own early exit would.
    // The weights x^2 and products w*x do not change between passes: compute them once.
    let mut w_all = [0.0f32; 32 * 16];
    let mut wx_all = [0.0f32; 32 * 16];
    for i in 0..n {
        let x = V::load(&xt[i * nl..]);
        let w = x.mul(x);
        w.store(&mut w_all[i * nl..]);
        w.mul(x).store(&mut wx_all[i * nl..]);
    }
    for _ in 0..5 {
        let mut changed_mask = zero.lt(zero);
        for i in 0..n {
            let x = V::load(&xt[i * nl..]);
            let w = V::load(&w_all[i * nl..]);
            let wx = V::load(&wx_all[i * nl..]);
            let li = V::load_i(&lv[i * nl..]);
            let lf = V::to_f(li);
            let slx = sumlx.sub(wx.mul(lf));
            let sl2 = suml2.sub(w.mul(lf).mul(lf));
            let new_l = V::clamp_i(x.mul(sl2).div(slx).nearest_int(), -nmax, nmax - 1);
            let nf = V::to_f(new_l);
            let slx_new = slx.add(wx.mul(nf));
            let sl2_new = sl2.add(w.mul(nf).mul(nf));
            let accept = V::and(
                V::and(zero.lt(slx), V::ne_i(new_l, li)),
                V::and(
                    zero.lt(sl2_new),
                    sumlx
                        .mul(sumlx)
                        .mul(sl2_new)
                        .lt(slx_new.mul(slx_new).mul(suml2)),
                ),
            );
            // Unconditional selects: a branch on "any lane accepted" mispredicts constantly.
            V::store_i(V::select_i(accept, new_l, li), &mut lv[i * nl..]);
            sumlx = V::select(accept, slx_new, sumlx);
            suml2 = V::select(accept, sl2_new, suml2);
            changed_mask = V::or(changed_mask, accept);
        }
        let changed = V::any(changed_mask);
        if !changed {
            break;
        }
    }
    let all_zero = amax.lt(V::splat(GROUP_MAX_EPS));
    let zero_i = V::clamp_i(zero.nearest_int(), 0, 0);
    for i in 0..n {
        let l = V::add_i(V::load_i(&lv[i * nl..]), nmax);
        V::store_i(V::select_i(all_zero, zero_i, l), &mut lv[i * nl..]);
    }
    let scale = V::select(zero.lt(suml2), sumlx.div(suml2), zero);
    V::select(all_zero, zero, scale).store(scale_out);
}

/// The IQ4 grid value nearest to `x` with ggml's tie rule (`best_index_int8`, value only).
#[inline(always)]
unsafe fn iq4_value<V: Lanes>(x: V, grid: &[V; 16]) -> V {
    let mut lo = grid[0];
    let mut hi = grid[15];
    for k in 1..15 {
        lo = V::select(grid[k].le(x), grid[k], lo);
    }
    for k in (1..15).rev() {
        hi = V::select(x.lt(grid[k]), grid[k], hi);
    }
    let mut r = V::select(x.sub(lo).lt(hi.sub(x)), lo, hi);
    r = V::select(grid[15].le(x), grid[15], r);
    V::select(x.le(grid[0]), grid[0], r)
}

/// IQ4 scale search (`search_block_scale`) of `V::N` 32-element blocks.
#[inline(always)]
pub unsafe fn iq4<V: Lanes>(xt: &[f32], wt: &[f32], scale_out: &mut [f32]) {
    let nl = V::N;
    let zero = V::splat(0.0);
    let mut grid = [zero; 16];
    for k in 0..16 {
        grid[k] = V::splat(IQ4_VALUES[k] as f32);
    }
    let (max, amax) = signed_absmax::<V>(xt, 32);
    let d0 = neg(max).div(grid[0]);
    let mut id = V::splat(1.0).div(d0);
    let mut sumqx = zero;
    let mut sumq2 = zero;
    for i in 0..32 {
        let x = V::load(&xt[i * nl..]);
        let w = V::load(&wt[i * nl..]);
        let q = iq4_value(id.mul(x), &grid);
        let wq = w.mul(q);
        sumqx = sumqx.add(wq.mul(x));
        sumq2 = sumq2.add(wq.mul(q));
    }
    let mut d = V::select(zero.lt(sumq2), sumqx.div(sumq2), zero);
    let mut best = d.mul(sumqx);
    // The sums loop is written out again (not a closure): a closure is compiled without the
    // enclosing kernel's target features, which made this kernel 30x slower when tried.
    for itry in -NTRY..=NTRY {
        id = V::splat((itry + IQ4_VALUES[0] as i32) as f32).div(max);
        let mut sqx = zero;
        let mut sq2 = zero;
        for i in 0..32 {
            let x = V::load(&xt[i * nl..]);
            let w = V::load(&wt[i * nl..]);
            let q = iq4_value(id.mul(x), &grid);
            let wq = w.mul(q);
            sqx = sqx.add(wq.mul(x));
            sq2 = sq2.add(wq.mul(q));
        }
        let better = V::and(zero.lt(sq2), best.mul(sq2).lt(sqx.mul(sqx)));
        let new_d = sqx.div(sq2);
        d = V::select(better, new_d, d);
        best = V::select(better, new_d.mul(sqx), best);
    }
    V::select(amax.lt(V::splat(GROUP_MAX_EPS)), zero, d).store(scale_out);
}

/// Final levels against the quantized sub-block scales: `clamp(nearest_int((x + m) / d))`
/// elementwise (with `m = 0` for symmetric formats), sub-blocks with `d == 0` left untouched.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn requant<V: Lanes>(
    xs: &[f32],
    sub: usize,
    d: &[f32],
    m: Option<&[f32]>,
    lo: i32,
    hi: i32,
    offset: i32,
    mut write: impl FnMut(usize, &[i32]),
) {
    let mut tmp = [0i32; 16];
    for (j, &dj) in d.iter().enumerate() {
        if dj == 0.0 {
            continue;
        }
        let dv = V::splat(dj);
        for c in (0..sub).step_by(V::N) {
            let at = j * sub + c;
            let mut x = V::load(&xs[at..]);
            if let Some(m) = m {
                x = x.add(V::splat(m[j]));
            }
            let l = V::add_i(V::clamp_i(x.div(dv).nearest_int(), lo, hi), offset);
            V::store_i(l, &mut tmp);
            write(at, &tmp[..V::N]);
        }
    }
}
