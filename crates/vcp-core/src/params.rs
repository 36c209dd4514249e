//! Trainable parameters: a candle `VarMap` whose values are drawn with the reference's
//! initialisers from our own seeded generator (candle's CPU RNG is not seedable per model), so a
//! seed fixes the whole initial model. Frozen CLIP weights never enter this map.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::VarMap;

pub struct Params {
    pub varmap: VarMap,
    device: Device,
    rng: vcp_data::rng::SplitMix64,
    /// Creation order (the checkpoint and optimiser groups use it).
    pub names: Vec<String>,
}

impl Params {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            varmap: VarMap::new(),
            device: device.clone(),
            rng: vcp_data::rng::SplitMix64(seed ^ 0x5DEE_CE66_D1CE_4E5B),
            names: vec![],
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn uniform01(&mut self) -> f64 {
        self.rng.f64()
    }
    fn gauss(&mut self) -> f64 {
        self.rng.normal_f64()
    }

    fn add(&mut self, name: &str, data: Vec<f32>, shape: Shape) -> Result<Tensor> {
        let t = Tensor::from_vec(data, shape, &self.device)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.varmap
            .data()
            .lock()
            .unwrap()
            .insert(name.to_string(), var);
        self.names.push(name.to_string());
        Ok(out)
    }

    pub fn uniform(&mut self, name: &str, shape: impl Into<Shape>, bound: f64) -> Result<Tensor> {
        let shape = shape.into();
        let data = (0..shape.elem_count())
            .map(|_| ((self.uniform01() * 2.0 - 1.0) * bound) as f32)
            .collect();
        self.add(name, data, shape)
    }

    pub fn normal(&mut self, name: &str, shape: impl Into<Shape>, std: f64) -> Result<Tensor> {
        let shape = shape.into();
        let data = (0..shape.elem_count())
            .map(|_| (self.gauss() * std) as f32)
            .collect();
        self.add(name, data, shape)
    }

    /// Normal truncated to [-2 std, 2 std] (`nn.init.trunc_normal_` with default bounds at std 1).
    pub fn trunc_normal(
        &mut self,
        name: &str,
        shape: impl Into<Shape>,
        std: f64,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let data = (0..shape.elem_count())
            .map(|_| loop {
                let g = self.gauss();
                if g.abs() <= 2.0 {
                    break (g * std) as f32;
                }
            })
            .collect();
        self.add(name, data, shape)
    }

    pub fn constant(&mut self, name: &str, shape: impl Into<Shape>, value: f64) -> Result<Tensor> {
        let shape = shape.into();
        self.add(name, vec![value as f32; shape.elem_count()], shape)
    }

    /// A parameter initialised from a given tensor (e.g. word embeddings).
    pub fn tensor(&mut self, name: &str, init: &Tensor) -> Result<Tensor> {
        let data = init.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.add(name, data, init.shape().clone())
    }

    /// A learnable scalar or, when `learnable` is false, a plain constant tensor.
    pub fn scalar(&mut self, name: &str, value: f64, learnable: bool) -> Result<Tensor> {
        if learnable {
            self.add(name, vec![value as f32], Shape::from(()))
        } else {
            Tensor::new(value as f32, &self.device)
        }
    }

    /// A seed for a component's own random stream (e.g. dropout), derived from the model seed.
    pub fn derive_seed(&mut self) -> u64 {
        self.next_u64()
    }

    pub fn dtype(&self) -> DType {
        DType::F32
    }

    pub fn vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().unwrap();
        self.names
            .iter()
            .filter_map(|n| data.get(n).map(|v| (n.clone(), v.clone())))
            .collect()
    }
}
