//! What flows between the frozen towers and the components.

use candle_core::{Result, Tensor};

/// Outputs of the frozen image tower for a batch.
#[derive(Debug, Clone)]
pub struct Features {
    /// Per tapped layer, `[B, 1 + g*g, W]`, class token first.
    pub layers: Vec<Tensor>,
    /// `[B, D]`, unnormalised.
    pub global: Tensor,
    pub grid: usize,
}

impl Features {
    pub fn batch(&self) -> Result<usize> {
        self.global.dim(0)
    }
    /// Select images `idx` (e.g. to assemble a batch from cached features).
    pub fn select(&self, idx: &[usize]) -> Result<Features> {
        let ids = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            self.global.device(),
        )?;
        Ok(Features {
            layers: self
                .layers
                .iter()
                .map(|t| t.index_select(&ids, 0))
                .collect::<Result<_>>()?,
            global: self.global.index_select(&ids, 0)?,
            grid: self.grid,
        })
    }
    pub fn cat(parts: &[Features]) -> Result<Features> {
        let n = parts[0].layers.len();
        Ok(Features {
            layers: (0..n)
                .map(|i| {
                    Tensor::cat(
                        &parts
                            .iter()
                            .map(|p| p.layers[i].clone())
                            .collect::<Vec<_>>(),
                        0,
                    )
                })
                .collect::<Result<_>>()?,
            global: Tensor::cat(
                &parts.iter().map(|p| p.global.clone()).collect::<Vec<_>>(),
                0,
            )?,
            grid: parts[0].grid,
        })
    }
}

/// Intermediates, for parity tests and debugging. The assembly's own (category tokens, the
/// text tower's first input, the head's projected tokens) are fields; a component records its
/// own under names it chooses (`post_vcp.q`, one tensor per tapped layer), so this type knows
/// no component.
#[derive(Debug, Default)]
pub struct Trace {
    pub class_tokens: Option<Tensor>,
    /// Input of text layer 1 after deep-prompt insertion, `[2, Bc, L, W]`.
    pub layer1_input: Option<Tensor>,
    pub raw_linear: Vec<Tensor>,
    components: std::collections::BTreeMap<String, Vec<Tensor>>,
}

impl Trace {
    /// Append `t` to the list named `name` (a component calls it once per tapped layer).
    pub fn push(&mut self, name: &str, t: Tensor) {
        self.components.entry(name.to_string()).or_default().push(t);
    }

    /// What a component recorded under `name`, in push order (empty if nothing).
    pub fn get(&self, name: &str) -> &[Tensor] {
        self.components.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The names components recorded, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.components.keys().map(String::as_str)
    }
}
