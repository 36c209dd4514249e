//! Unified text prompt (UTP, VCP-CLIP §3.1; reference `models/prompt_ensemble.py` +
//! `encode_text`): one template per state with `<|class|>`, whose single position is replaced
//! by the `r` category tokens; the sequence keeps its length (the last `r - 1` positions are
//! dropped) and the EOT index shifts by `r - 1`. State words may be lists of synonyms (the
//! normalised embeddings are averaged and normalised again) and may be made learnable.

use crate::ids_of;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use vcp_clip::PromptHook;
use vcp_core::{l2norm, BuildCtx, TextCtx, TextPrompt};

/// One state word, or several synonyms whose prompt embeddings are averaged (an ensemble).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StateWords {
    One(String),
    Many(Vec<String>),
}

impl StateWords {
    pub fn words(&self) -> Vec<String> {
        match self {
            StateWords::One(s) => vec![s.clone()],
            StateWords::Many(v) => v.clone(),
        }
    }
}

/// `[prompt] kind = "utp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UtpConfig {
    #[serde(default = "default_template")]
    pub template: String,
    /// A word or a list of synonyms (ensembled: mean of the normalised embeddings).
    #[serde(default = "default_good")]
    pub normal_state: StateWords,
    #[serde(default = "default_damaged")]
    pub abnormal_state: StateWords,
    /// Make the state words' token embeddings learnable (initialised from the words).
    #[serde(default)]
    pub learnable_states: bool,
}

fn default_template() -> String {
    "a photo of a {state} <|class|>".into()
}
fn default_good() -> StateWords {
    StateWords::One("good".into())
}
fn default_damaged() -> StateWords {
    StateWords::One("damaged".into())
}

pub struct Utp {
    /// One row per prompt sequence: each state word (synonym) of each state, `[S, L]`.
    ids: Tensor,
    class_pos: Vec<usize>,
    eot: Vec<usize>,
    /// State (0 normal, 1 abnormal) of each sequence.
    state_of: Vec<usize>,
    /// Learnable state-word embeddings of each sequence: (first position, `[m, W]`).
    learned: Vec<Option<(usize, Tensor)>>,
}

impl Utp {
    pub fn new(cfg: &UtpConfig, ctx: &mut BuildCtx) -> Result<Self> {
        let text = &ctx.clip.text;
        let tok = ctx.tokenizer;
        let len = text.context_length();
        let template = &cfg.template;
        if !template.contains("{state}") || !template.contains(vcp_clip::tokenizer::CLASS_TOKEN) {
            candle_core::bail!(
                "prompt.template must contain `{{state}}` and `<|class|>`, got `{template}`"
            );
        }
        let mut all = Vec::new();
        let (mut class_pos, mut eot, mut state_of, mut learned) = (vec![], vec![], vec![], vec![]);
        for (j, words) in [&cfg.normal_state, &cfg.abnormal_state].iter().enumerate() {
            let words = words.words();
            if words.is_empty() || words.iter().any(|w| w.trim().is_empty()) {
                candle_core::bail!(
                    "prompt.{}_state: give at least one non-empty word",
                    ["normal", "abnormal"][j]
                );
            }
            for (wi, word) in words.iter().enumerate() {
                let (ids, e) = ids_of(tok, &template.replace("{state}", word), len)?;
                class_pos.push(
                    ids.iter()
                        .position(|&i| i == vcp_clip::tokenizer::CLASS)
                        .ok_or_else(|| {
                            candle_core::Error::Msg(format!(
                                "prompt.template: `<|class|>` does not survive tokenisation in `{template}`"
                            ))
                        })?,
                );
                eot.push(e);
                state_of.push(j);
                learned.push(if cfg.learnable_states {
                    // CoOp-style: the word's own token embeddings are the initial value.
                    let w_ids = tok.encode(word);
                    let pos = ids
                        .windows(w_ids.len())
                        .position(|win| win == w_ids.as_slice())
                        .ok_or_else(|| {
                            candle_core::Error::Msg(format!(
                                "prompt: state word `{word}` is not tokenised alone inside the template"
                            ))
                        })?;
                    let ids_t = Tensor::from_vec(w_ids.clone(), (1, w_ids.len()), ctx.device)?;
                    let init = text.embed_ids(&ids_t)?.squeeze(0)?;
                    let name = format!("prompt.state_{}.{wi}", ["normal", "abnormal"][j]);
                    Some((pos, ctx.params.tensor(&name, &init)?))
                } else {
                    None
                });
                all.extend(ids);
            }
        }
        let n = eot.len();
        Ok(Self {
            ids: Tensor::from_vec(all, (n, len), ctx.device)?,
            class_pos,
            eot,
            state_of,
            learned,
        })
    }
}

impl TextPrompt for Utp {
    fn takes_category_tokens(&self) -> bool {
        true
    }

    /// The `r` tokens replace one position and push the EOT `r - 1` positions on: it must stay
    /// inside the context.
    fn check_category_tokens(&self, r: usize) -> Result<()> {
        let len = self.ids.dim(1)?;
        if let Some(&e) = self.eot.iter().max() {
            if r == 0 || e + r > len {
                candle_core::bail!(
                    "category.tokens = {r}: with the prompt's {} tokens the sequence needs {} of the text context's {len} positions",
                    e + 1,
                    e + r
                );
            }
        }
        Ok(())
    }

    fn encode(
        &self,
        ctx: &TextCtx,
        category: Option<&Tensor>,
        hook: Option<&dyn PromptHook>,
        _class: &str,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let text = &ctx.clip.text;
        let hook = hook.unwrap_or(&vcp_clip::NoHook);
        let c = category.ok_or_else(|| {
            candle_core::Error::Msg(
                "UTP needs category tokens (category.kind = static or pre_vcp)".into(),
            )
        })?;
        let (bc, r, _) = c.dims3()?;
        let x = text.embed_ids(&self.ids)?; // [S, L, W]
        let (ns, l, w) = x.dims3()?;
        let mut seqs = Vec::with_capacity(ns);
        let mut eots = Vec::with_capacity(ns * bc);
        for j in 0..ns {
            let mut xj = x.get(j)?; // [L, W]
            if let Some((pos, emb)) = &self.learned[j] {
                let m = emb.dim(0)?;
                xj = Tensor::cat(
                    &[
                        &xj.narrow(0, 0, *pos)?,
                        emb,
                        &xj.narrow(0, pos + m, l - pos - m)?,
                    ],
                    0,
                )?;
            }
            let p = self.class_pos[j];
            let head = xj.narrow(0, 0, p)?.unsqueeze(0)?.broadcast_as((bc, p, w))?;
            let tail_len = l - r + 1 - (p + 1);
            let tail = xj
                .narrow(0, p + 1, tail_len)?
                .unsqueeze(0)?
                .broadcast_as((bc, tail_len, w))?;
            seqs.push(Tensor::cat(
                &[&head.contiguous()?, c, &tail.contiguous()?],
                1,
            )?); // [Bc, L, W]
            eots.extend(std::iter::repeat_n(self.eot[j] + r - 1, bc));
        }
        let x = Tensor::stack(&seqs, 0)?; // [S, Bc, L, W]
        let x = x.broadcast_add(text.positional_embedding())?;
        let layer1 = x.clone();
        let flat = x.reshape((ns * bc, l, w))?;
        let e = l2norm(&text.forward_embeds(&flat, &eots, hook)?)?; // [S Bc, D]
        let d = e.dim(1)?;
        let e = e.reshape((ns, bc, d))?;
        // Mean over each state's synonyms, normalised again (reference: one template).
        let mut states = Vec::with_capacity(2);
        for st in 0..2 {
            let idx: Vec<u32> = (0..ns)
                .filter(|&j| self.state_of[j] == st)
                .map(|j| j as u32)
                .collect();
            let k = idx.len();
            let sel = e.index_select(&Tensor::from_vec(idx, k, e.device())?, 0)?;
            states.push(l2norm(&sel.mean(0)?)?); // [Bc, D]
        }
        Ok((Tensor::stack(&states, 1)?, Some(layer1)))
    }
}
