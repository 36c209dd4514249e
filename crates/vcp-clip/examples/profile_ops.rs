//! Op-level timing of one ViT-B/16 block's pieces at 224 px (197 tokens), to see where CPU time goes.
//! `RAYON_NUM_THREADS=2 cargo run --release -p vcp-clip --example profile_ops`
use candle_core::{Device, Tensor};
use std::time::Instant;

fn time<F: FnMut()>(name: &str, n: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:<28} {:8.3} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}

fn main() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (197, 768), &d).unwrap();
    let w_qkv = Tensor::randn(0f32, 1., (2304, 768), &d).unwrap();
    let w_qkv_t = w_qkv.t().unwrap().contiguous().unwrap();
    let w_fc1 = Tensor::randn(0f32, 1., (3072, 768), &d).unwrap();
    let h = Tensor::randn(0f32, 1., (197, 3072), &d).unwrap();
    let w_fc2 = Tensor::randn(0f32, 1., (768, 3072), &d).unwrap();
    let q = Tensor::randn(0f32, 1., (1, 12, 197, 64), &d).unwrap();
    let k = Tensor::randn(0f32, 1., (1, 12, 197, 64), &d).unwrap();
    let kt = k.t().unwrap().contiguous().unwrap();
    let s = Tensor::randn(0f32, 1., (1, 12, 197, 197), &d).unwrap();
    let lw = Tensor::ones(768, candle_core::DType::F32, &d).unwrap();
    let lb = Tensor::zeros(768, candle_core::DType::F32, &d).unwrap();
    let n = 50;
    time("qkv x@W^T (strided)", n, || {
        x.matmul(&w_qkv.t().unwrap()).unwrap();
    });
    time("qkv x@Wt (contiguous)", n, || {
        x.matmul(&w_qkv_t).unwrap();
    });
    time("fc1 x@W^T", n, || {
        x.matmul(&w_fc1.t().unwrap()).unwrap();
    });
    time("fc2 h@W^T", n, || {
        h.matmul(&w_fc2.t().unwrap()).unwrap();
    });
    time("attn q@k^T (strided)", n, || {
        q.matmul(&k.t().unwrap()).unwrap();
    });
    time("attn q@kt (contiguous)", n, || {
        q.matmul(&kt).unwrap();
    });
    time("attn s@v", n, || {
        s.matmul(&q).unwrap();
    });
    time("softmax_last_dim", n, || {
        candle_nn::ops::softmax_last_dim(&s).unwrap();
    });
    time("layer_norm fused", n, || {
        candle_nn::ops::layer_norm(&x, &lw, &lb, 1e-5).unwrap();
    });
    time("quick_gelu (sigmoid)", n, || {
        (&h * candle_nn::ops::sigmoid(&(&h * 1.702).unwrap()).unwrap()).unwrap();
    });
    time("gelu_erf", n, || {
        h.gelu_erf().unwrap();
    });
    let w_fc2_t = w_fc2.t().unwrap().contiguous().unwrap();
    time("fc2 h@Wt (contiguous)", n, || {
        h.matmul(&w_fc2_t).unwrap();
    });
    let hb = h.unsqueeze(0).unwrap();
    time("fc2 [1,197,3072] bcast", n, || {
        hb.broadcast_matmul(&w_fc2.t().unwrap()).unwrap();
    });
    time("fc2 split k in 2", n, || {
        let a = h
            .narrow(1, 0, 1536)
            .unwrap()
            .matmul(&w_fc2.narrow(1, 0, 1536).unwrap().t().unwrap())
            .unwrap();
        let b = h
            .narrow(1, 1536, 1536)
            .unwrap()
            .matmul(&w_fc2.narrow(1, 1536, 1536).unwrap().t().unwrap())
            .unwrap();
        (a + b).unwrap();
    });
    time("quick_gelu via silu", n, || {
        ((&h * 1.702).unwrap().silu().unwrap() / 1.702).unwrap();
    });
    time("silu only", n, || {
        h.silu().unwrap();
    });
    let xt = x.t().unwrap().contiguous().unwrap();
    let ht = h.t().unwrap().contiguous().unwrap();
    time("qkv (W@x^T)^T", n, || {
        w_qkv
            .matmul(&xt)
            .unwrap()
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
    });
    time("fc1 (W@x^T)^T", n, || {
        w_fc1
            .matmul(&xt)
            .unwrap()
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
    });
    time("fc2 (W@h^T)^T", n, || {
        w_fc2
            .matmul(&ht)
            .unwrap()
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
    });
    let w_fc1_t = w_fc1.t().unwrap().contiguous().unwrap();
    time("fc1 x@Wt (contiguous)", n, || {
        x.matmul(&w_fc1_t).unwrap();
    });
    time("add residual", n, || {
        (&x + &x).unwrap();
    });
    time("permute+contiguous qkv", n, || {
        q.transpose(1, 2).unwrap().contiguous().unwrap();
    });
}
