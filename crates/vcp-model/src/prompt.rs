//! Text prompting: the two text embeddings `T = [normal, abnormal]`, `[Bc, 2, D]`, L2-normalised.
//!
//! * `Utp` (paper §3.1; reference `models/prompt_ensemble.py` + `encode_text`): one template per
//!   state with `<|class|>`, whose single position is replaced by the `r` category tokens; the
//!   sequence keeps 77 positions (the last `r - 1` are dropped) and the EOT index shifts by `r - 1`.
//! * `Handcrafted` (WinCLIP / APRIL-GAN): state phrases x templates with a class word, each
//!   sentence encoded and normalised, averaged per state, normalised again.
//! * `LearnedContext` (AnomalyCLIP-style, object-agnostic): `n_ctx` learnable vectors per state
//!   after the start token, then the state words.

use crate::config::PromptConfig;
use crate::dtp::Dtp;
use crate::params::Params;
use crate::post_vcp::l2norm;
use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;
use std::sync::Mutex;
use vcp_clip::{Clip, NoHook, PromptHook, TextTower, Tokenizer};

pub enum TextPrompt {
    Utp {
        /// One row per prompt sequence: each state word (synonym) of each state, `[S, 77]`.
        ids: Tensor,
        class_pos: Vec<usize>,
        eot: Vec<usize>,
        /// State (0 normal, 1 abnormal) of each sequence.
        state_of: Vec<usize>,
        /// Learnable state-word embeddings of each sequence: (first position, `[m, W]`).
        learned: Vec<Option<(usize, Tensor)>>,
    },
    Handcrafted {
        cfg: PromptConfig,
        cache: Mutex<HashMap<String, Tensor>>,
    },
    LearnedContext {
        ids: Tensor, // [2, 77]
        eot: [usize; 2],
        ctx: [Tensor; 2], // [n, W] each
    },
}

fn ids_of(tok: &Tokenizer, text: &str, ctx: usize, dev: &Device) -> Result<(Vec<u32>, usize)> {
    let ids = tok
        .tokenize(text, ctx, true)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let eot = ids
        .iter()
        .position(|&i| i == vcp_clip::tokenizer::EOT)
        .unwrap_or(ctx - 1);
    let _ = dev;
    Ok((ids, eot))
}

impl TextPrompt {
    pub fn new(
        cfg: &PromptConfig,
        p: &mut Params,
        tok: &Tokenizer,
        text: &TextTower,
        dev: &Device,
    ) -> Result<Self> {
        let (width, ctx) = (text.width(), text.context_length());
        Ok(match cfg {
            PromptConfig::Utp {
                template,
                normal_state,
                abnormal_state,
                learnable_states,
            } => {
                if !template.contains("{state}")
                    || !template.contains(vcp_clip::tokenizer::CLASS_TOKEN)
                {
                    candle_core::bail!("prompt.template must contain `{{state}}` and `<|class|>`, got `{template}`");
                }
                let mut all = Vec::new();
                let (mut class_pos, mut eot, mut state_of, mut learned) =
                    (vec![], vec![], vec![], vec![]);
                for (j, words) in [normal_state, abnormal_state].iter().enumerate() {
                    let words = words.words();
                    if words.is_empty() || words.iter().any(|w| w.trim().is_empty()) {
                        candle_core::bail!(
                            "prompt.{}_state: give at least one non-empty word",
                            ["normal", "abnormal"][j]
                        );
                    }
                    for (wi, word) in words.iter().enumerate() {
                        let (ids, e) = ids_of(tok, &template.replace("{state}", word), ctx, dev)?;
                        class_pos.push(
                            ids.iter()
                                .position(|&i| i == vcp_clip::tokenizer::CLASS)
                                .unwrap(),
                        );
                        eot.push(e);
                        state_of.push(j);
                        learned.push(if *learnable_states {
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
                            let ids_t = Tensor::from_vec(w_ids.clone(), (1, w_ids.len()), dev)?;
                            let init = text
                                .embed_ids(&ids_t)
                                .map_err(|e| candle_core::Error::Msg(e.to_string()))?
                                .squeeze(0)?;
                            let name = format!(
                                "prompt.state_{}.{wi}",
                                ["normal", "abnormal"][j]
                            );
                            Some((pos, p.tensor(&name, &init)?))
                        } else {
                            None
                        });
                        all.extend(ids);
                    }
                }
                let n = eot.len();
                TextPrompt::Utp {
                    ids: Tensor::from_vec(all, (n, ctx), dev)?,
                    class_pos,
                    eot,
                    state_of,
                    learned,
                }
            }
            PromptConfig::Handcrafted { .. } => TextPrompt::Handcrafted {
                cfg: cfg.clone(),
                cache: Mutex::new(HashMap::new()),
            },
            PromptConfig::LearnedContext {
                n_ctx,
                normal_words,
                abnormal_words,
            } => {
                let mut all = Vec::new();
                let mut eot = [0; 2];
                for (j, words) in [normal_words, abnormal_words].iter().enumerate() {
                    let (ids, e) = ids_of(tok, words, ctx, dev)?;
                    eot[j] = e + n_ctx;
                    all.extend(ids);
                }
                TextPrompt::LearnedContext {
                    ids: Tensor::from_vec(all, (2, ctx), dev)?,
                    eot,
                    ctx: [
                        p.normal("prompt.ctx_normal", (*n_ctx, width), 0.02)?,
                        p.normal("prompt.ctx_abnormal", (*n_ctx, width), 0.02)?,
                    ],
                }
            }
        })
    }

    /// Whether the embeddings depend on the image (then they are computed per image).
    pub fn needs_category_tokens(&self) -> bool {
        matches!(self, TextPrompt::Utp { .. })
    }

    /// The two state embeddings.
    ///
    /// # Shapes
    /// `category`: `[Bc, r, W]` (UTP only) → `[Bc, 2, D]` (`Bc = 1` when nothing is image-specific).
    /// Also returns the input embeddings of the first text layer, `[2, Bc, L, W]` (UTP), for tests.
    pub fn encode(
        &self,
        clip: &Clip,
        tok: &Tokenizer,
        category: Option<&Tensor>,
        dtp: Option<&Dtp>,
        train: bool,
        class: &str,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let text = &clip.text;
        let hook_box: Box<dyn PromptHook> = match dtp {
            Some(d) => Box::new(d.hook(train)?),
            None => Box::new(NoHook),
        };
        let hook: &dyn PromptHook = hook_box.as_ref();
        let map = |e: vcp_clip::ClipError| candle_core::Error::Msg(e.to_string());
        match self {
            TextPrompt::Utp {
                ids,
                class_pos,
                eot,
                state_of,
                learned,
            } => {
                let c = category.ok_or_else(|| {
                    candle_core::Error::Msg(
                        "UTP needs category tokens (category.kind = static or pre_vcp)".into(),
                    )
                })?;
                let (bc, r, _) = c.dims3()?;
                let x = text.embed_ids(ids).map_err(map)?; // [S, L, W]
                let (ns, l, w) = x.dims3()?;
                let mut seqs = Vec::with_capacity(ns);
                let mut eots = Vec::with_capacity(ns * bc);
                for j in 0..ns {
                    let mut xj = x.get(j)?; // [L, W]
                    if let Some((pos, emb)) = &learned[j] {
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
                    let p = class_pos[j];
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
                    eots.extend(std::iter::repeat_n(eot[j] + r - 1, bc));
                }
                let x = Tensor::stack(&seqs, 0)?; // [S, Bc, L, W]
                let x = x.broadcast_add(text.positional_embedding())?;
                let layer1 = x.clone();
                let flat = x.reshape((ns * bc, l, w))?;
                let e = l2norm(&text.forward_embeds(&flat, &eots, hook).map_err(map)?)?; // [S Bc, D]
                let d = e.dim(1)?;
                let e = e.reshape((ns, bc, d))?;
                // Mean over each state's synonyms, normalised again (reference: one template).
                let mut states = Vec::with_capacity(2);
                for st in 0..2 {
                    let idx: Vec<u32> = (0..ns)
                        .filter(|&j| state_of[j] == st)
                        .map(|j| j as u32)
                        .collect();
                    let k = idx.len();
                    let sel = e.index_select(&Tensor::from_vec(idx, k, e.device())?, 0)?;
                    states.push(l2norm(&sel.mean(0)?)?); // [Bc, D]
                }
                Ok((Tensor::stack(&states, 1)?, Some(layer1)))
            }
            TextPrompt::LearnedContext { ids, eot, ctx } => {
                let x = text.embed_ids(ids).map_err(map)?; // [2, L, W]
                let l = x.dim(1)?;
                let mut seqs = Vec::new();
                for (j, c) in ctx.iter().enumerate() {
                    let n = c.dim(0)?;
                    let xj = x.get(j)?;
                    seqs.push(Tensor::cat(
                        &[&xj.narrow(0, 0, 1)?, c, &xj.narrow(0, 1, l - 1 - n)?],
                        0,
                    )?);
                }
                let x = Tensor::stack(&seqs, 0)?.broadcast_add(text.positional_embedding())?;
                let e = l2norm(&text.forward_embeds(&x, eot, hook).map_err(map)?)?; // [2, D]
                Ok((e.unsqueeze(0)?, None))
            }
            TextPrompt::Handcrafted { cfg, cache } => {
                let trainable_hook = dtp.is_some();
                if !trainable_hook {
                    if let Some(t) = cache.lock().unwrap().get(class) {
                        return Ok((t.clone(), None));
                    }
                }
                let PromptConfig::Handcrafted {
                    object,
                    class_name,
                    normal_states,
                    abnormal_states,
                    templates,
                } = cfg
                else {
                    unreachable!()
                };
                let word = if *class_name {
                    class.replace('_', " ")
                } else {
                    object.clone()
                };
                let ctx = text.context_length();
                let dev = text.positional_embedding().device().clone();
                let mut states = Vec::new();
                for phrases in [normal_states, abnormal_states] {
                    let mut ids = Vec::new();
                    let mut eots = Vec::new();
                    for ph in phrases {
                        for t in templates {
                            let sentence = t.replace("{}", &ph.replace("{}", &word));
                            let (i, e) = ids_of(tok, &sentence, ctx, &dev)?;
                            ids.extend(i);
                            eots.push(e);
                        }
                    }
                    let n = eots.len();
                    let x = text
                        .embed_ids(&Tensor::from_vec(ids, (n, ctx), &dev)?)
                        .map_err(map)?;
                    let x = x.broadcast_add(text.positional_embedding())?;
                    let e = l2norm(&text.forward_embeds(&x, &eots, hook).map_err(map)?)?; // [n, D]
                    states.push(l2norm(&e.mean_keepdim(0)?)?); // [1, D]
                }
                let t = Tensor::cat(&states, 0)?.unsqueeze(0)?; // [1, 2, D]
                let t = if trainable_hook { t } else { t.detach() };
                if !trainable_hook {
                    cache.lock().unwrap().insert(class.to_string(), t.clone());
                }
                Ok((t, None))
            }
        }
    }
}
