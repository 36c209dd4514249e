//! The fused CPU ops with analytic backward (`vcp_clip::fused`): forward equal to candle's own
//! composition (1e-6 relative) and to a float64 hand computation; gradients equal to candle's
//! composition's and to central finite differences of the float64 forward; odd shapes (one
//! token, widths that are not multiples of 8, batch 1).

use candle_core::{Device, Tensor, Var, D};
use vcp_clip::fused;

/// Deterministic values in [-a, a].
fn vals(seed: u64, n: usize, a: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * a
        })
        .collect()
}

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(f, shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// max |a - b| / max(|b|, floor).
fn rel(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
        .fold(0.0, f64::max)
}

const SHAPES: [&[usize]; 5] = [&[2, 5, 13], &[1, 1, 7], &[3, 17], &[1, 4, 1, 9], &[4, 24]];

// --- float64 references (written from the definitions, independent of the code under test) ---

fn ln64(x: &[f64], g: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let d = g.len();
    x.chunks(d)
        .flat_map(|r| {
            let m = r.iter().sum::<f64>() / d as f64;
            let v = r.iter().map(|a| (a - m).powi(2)).sum::<f64>() / d as f64;
            r.iter()
                .enumerate()
                .map(move |(i, a)| (a - m) / (v + eps).sqrt() * g[i] + b[i])
                .collect::<Vec<_>>()
        })
        .collect()
}

fn softmax64(x: &[f64], d: usize) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = r.iter().map(|a| (a - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |a| a / s)
        })
        .collect()
}

fn quick_gelu64(x: &[f64]) -> Vec<f64> {
    x.iter().map(|a| a / (1.0 + (-1.702 * a).exp())).collect()
}

/// d/dx_i of sum_j f(x)_j * r_j by central differences of the float64 forward.
fn fd_grad(f: &dyn Fn(&[f64]) -> Vec<f64>, x: &[f64], r: &[f64]) -> Vec<f64> {
    let h = 1e-6;
    (0..x.len())
        .map(|i| {
            let mut p = x.to_vec();
            let mut m = x.to_vec();
            p[i] += h;
            m[i] -= h;
            let (fp, fm) = (f(&p), f(&m));
            fp.iter()
                .zip(&fm)
                .zip(r)
                .map(|((a, b), w)| (a - b) * w)
                .sum::<f64>()
                / (2.0 * h)
        })
        .collect()
}

/// The gradient of sum(y * r) with respect to each of `vars`, by candle's backward.
fn grads(y: &Tensor, r: &Tensor, vars: &[&Var]) -> Vec<Vec<f64>> {
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| flat(g.get(v.as_tensor()).expect("a gradient")))
        .collect()
}

#[test]
fn exp_f32_is_within_3e_7_of_exp_and_underflows_to_zero() {
    let mut worst = 0f64;
    let mut x = -87.0f64;
    while x <= 88.0 {
        let got = f64::from(fused::exp_f32(x as f32));
        let want = f64::from(x as f32).exp();
        worst = worst.max((got - want).abs() / want);
        x += 0.00731;
    }
    assert!(worst < 3e-7, "relative error {worst}");
    assert_eq!(fused::exp_f32(-100.0), 0.0);
    assert_eq!(fused::exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(fused::exp_f32(0.0), 1.0);
}

#[test]
fn layer_norm_forward_and_gradients() {
    for (k, shape) in SHAPES.iter().enumerate() {
        let d = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let (xv, gv, bv, rv) = (
            vals(k as u64 + 1, n, 3.0),
            vals(k as u64 + 11, d, 1.5),
            vals(k as u64 + 21, d, 0.5),
            vals(k as u64 + 31, n, 1.0),
        );
        let eps = 1e-5;
        let x = Var::from_tensor(&t(&xv, shape)).unwrap();
        let g = Var::from_tensor(&t(&gv, &[d])).unwrap();
        let b = Var::from_tensor(&t(&bv, &[d])).unwrap();
        let r = t(&rv, shape);
        let ours = fused::layer_norm(x.as_tensor(), g.as_tensor(), b.as_tensor(), eps).unwrap();
        let theirs = candle_nn::ops::layer_norm_slow(
            x.as_tensor(),
            g.as_tensor(),
            b.as_tensor(),
            eps as f32,
        )
        .unwrap();
        // Hand computation from the f32-rounded inputs.
        let xf = flat(x.as_tensor());
        let gf = flat(g.as_tensor());
        let bf = flat(b.as_tensor());
        let want = ln64(&xf, &gf, &bf, eps);
        assert!(rel(&flat(&ours), &want, 1.0) < 2e-6, "{shape:?} vs f64");
        assert!(
            rel(&flat(&ours), &flat(&theirs), 1.0) < 1e-6,
            "{shape:?} vs candle"
        );
        let go = grads(&ours, &r, &[&x, &g, &b]);
        let gt = grads(&theirs, &r, &[&x, &g, &b]);
        let fx = fd_grad(&|v| ln64(v, &gf, &bf, eps), &xf, &rv);
        let fg = fd_grad(&|v| ln64(&xf, v, &bf, eps), &gf, &rv);
        let fb = fd_grad(&|v| ln64(&xf, &gf, v, eps), &bf, &rv);
        for (i, (name, fdv)) in [("x", &fx), ("gamma", &fg), ("beta", &fb)]
            .into_iter()
            .enumerate()
        {
            assert!(
                rel(&go[i], fdv, 1.0) < 1e-4,
                "{shape:?} d{name} vs finite differences"
            );
            assert!(
                rel(&go[i], &gt[i], 1.0) < 1e-5,
                "{shape:?} d{name} vs candle"
            );
        }
    }
}

#[test]
fn softmax_forward_and_gradients() {
    for (k, shape) in SHAPES.iter().enumerate() {
        let d = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let (xv, rv) = (vals(k as u64 + 41, n, 6.0), vals(k as u64 + 51, n, 1.0));
        let x = Var::from_tensor(&t(&xv, shape)).unwrap();
        let r = t(&rv, shape);
        let ours = fused::softmax_last(x.as_tensor()).unwrap();
        let theirs = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        let xf = flat(x.as_tensor());
        assert!(
            rel(&flat(&ours), &softmax64(&xf, d), 1e-3) < 1e-6,
            "{shape:?} vs f64"
        );
        assert!(
            rel(&flat(&ours), &flat(&theirs), 1e-3) < 1e-6,
            "{shape:?} vs candle"
        );
        let go = grads(&ours, &r, &[&x]);
        let gt = grads(&theirs, &r, &[&x]);
        let fx = fd_grad(&|v| softmax64(v, d), &xf, &rv);
        assert!(
            rel(&go[0], &fx, 1e-2) < 1e-4,
            "{shape:?} vs finite differences"
        );
        assert!(rel(&go[0], &gt[0], 1e-2) < 1e-5, "{shape:?} vs candle");
    }
    // A causal mask's -inf entries get probability 0 and no gradient.
    let x = Var::from_tensor(&t(&[0.5, f64::NEG_INFINITY, 1.0, 2.0], &[2, 2])).unwrap();
    let y = fused::softmax_last(x.as_tensor()).unwrap();
    let yv = flat(&y);
    assert_eq!(yv[..2], [1.0, 0.0]);
    let g = grads(&y, &t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]), &[&x]);
    assert!(g[0].iter().all(|v| v.is_finite()), "{g:?}");
}

#[test]
fn quick_gelu_forward_and_gradient() {
    for (k, shape) in SHAPES.iter().enumerate() {
        let n: usize = shape.iter().product();
        let (xv, rv) = (vals(k as u64 + 61, n, 8.0), vals(k as u64 + 71, n, 1.0));
        let x = Var::from_tensor(&t(&xv, shape)).unwrap();
        let r = t(&rv, shape);
        let ours = fused::quick_gelu(x.as_tensor()).unwrap();
        let xt = x.as_tensor();
        let theirs = (xt * candle_nn::ops::sigmoid(&(xt * 1.702).unwrap()).unwrap()).unwrap();
        let xf = flat(xt);
        assert!(
            rel(&flat(&ours), &quick_gelu64(&xf), 1e-3) < 1e-6,
            "{shape:?} vs f64"
        );
        assert!(
            rel(&flat(&ours), &flat(&theirs), 1e-3) < 1e-6,
            "{shape:?} vs candle"
        );
        let go = grads(&ours, &r, &[&x]);
        let gt = grads(&theirs, &r, &[&x]);
        let fx = fd_grad(&|v| quick_gelu64(v), &xf, &rv);
        assert!(
            rel(&go[0], &fx, 1e-2) < 1e-4,
            "{shape:?} vs finite differences"
        );
        assert!(rel(&go[0], &gt[0], 1e-2) < 1e-5, "{shape:?} vs candle");
    }
}

#[test]
fn bias_add_forward_and_gradients() {
    for (k, shape) in SHAPES.iter().enumerate() {
        let d = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let (xv, bv, rv) = (
            vals(k as u64 + 81, n, 2.0),
            vals(k as u64 + 91, d, 2.0),
            vals(k as u64 + 101, n, 1.0),
        );
        let x = Var::from_tensor(&t(&xv, shape)).unwrap();
        let b = Var::from_tensor(&t(&bv, &[d])).unwrap();
        let r = t(&rv, shape);
        let ours = fused::add_bias(x.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        assert_eq!(flat(&ours), flat(&theirs), "{shape:?}: one f32 add each");
        let go = grads(&ours, &r, &[&x, &b]);
        // d/dx = r; d/db_j = sum over rows of r[.., j] (exact sums in f64 of f32 values).
        let rf = flat(&r);
        assert_eq!(go[0], rf);
        let want_b: Vec<f64> = (0..d)
            .map(|j| rf.iter().skip(j).step_by(d).sum::<f64>())
            .collect();
        assert!(rel(&go[1], &want_b, 1.0) < 1e-6, "{shape:?} db");
    }
}

/// Odd inputs fall back to candle's composition: non-f32 dtypes, strided views.
#[test]
fn other_dtypes_and_strided_inputs_give_the_same_values() {
    let xv = vals(5, 2 * 3 * 8, 2.0);
    let x = t(&xv, &[2, 3, 8]);
    let g = t(&vals(6, 8, 1.0), &[8]);
    let b = t(&vals(7, 8, 1.0), &[8]);
    let xs = x.transpose(0, 1).unwrap(); // strided
    let a = fused::layer_norm(&xs, &g, &b, 1e-5).unwrap();
    let c = candle_nn::ops::layer_norm_slow(&xs.contiguous().unwrap(), &g, &b, 1e-5).unwrap();
    assert!(rel(&flat(&a), &flat(&c), 1.0) < 1e-6);
    let x64 = x.to_dtype(candle_core::DType::F64).unwrap();
    let s = fused::softmax_last(&x64).unwrap();
    assert_eq!(s.dtype(), candle_core::DType::F64);
    let want = softmax64(&flat(&x), 8);
    let got: Vec<f64> = s.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(rel(&got, &want, 1e-3) < 1e-12);
}

/// A Linear layer whose weight and bias are frozen (plain tensors) computes the input's gradient
/// alone: the output and that gradient are bit-identical to candle's matmul + bias add; a
/// trained weight (a `Var`) keeps candle's path and gets its gradient.
#[test]
fn frozen_linear_gives_the_input_gradient_only_and_the_same_bits() {
    let (rows, din, dout) = (7, 13, 5);
    let x = Var::from_tensor(&t(&vals(111, rows * din, 1.0), &[rows, din])).unwrap();
    let wt = t(&vals(112, din * dout, 0.5), &[din, dout]);
    let b = t(&vals(113, dout, 0.5), &[dout]);
    let r = t(&vals(114, rows * dout, 1.0), &[rows, dout]);
    let ours = fused::linear_2d(x.as_tensor(), &wt, Some(&b)).unwrap();
    let theirs = x
        .as_tensor()
        .matmul(&wt)
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    assert_eq!(flat(&ours), flat(&theirs));
    let go = grads(&ours, &r, &[&x]);
    let gt = grads(&theirs, &r, &[&x]);
    assert_eq!(go[0], gt[0], "dx bit for bit");
    // By hand: dx = r W (f64 of the f32 values).
    let (rf, wf) = (flat(&r), flat(&wt));
    for i in 0..rows {
        for k in 0..din {
            let want: f64 = (0..dout).map(|j| rf[i * dout + j] * wf[k * dout + j]).sum();
            assert!((go[0][i * din + k] - want).abs() < 1e-5, "dx[{i},{k}]");
        }
    }
    // A trained weight: its gradient is there.
    let wv = Var::from_tensor(&wt).unwrap();
    let y = fused::linear_2d(x.as_tensor(), wv.as_tensor(), Some(&b)).unwrap();
    let g = grads(&y, &r, &[&x, &wv]);
    let want_w: Vec<f64> = (0..din * dout)
        .map(|kj| {
            let (k, j) = (kj / dout, kj % dout);
            (0..rows)
                .map(|i| flat(x.as_tensor())[i * din + k] * rf[i * dout + j])
                .sum()
        })
        .collect();
    assert!(rel(&g[1], &want_w, 1.0) < 1e-5, "dW");
}
