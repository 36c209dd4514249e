//! WinCLIP / APRIL-GAN prompts: hand-written state phrases x templates with a class word; each
//! sentence is encoded and normalised, averaged per state, normalised again. Without a deep
//! prompt the result depends only on the class word, so it is computed once per class.

use crate::ids_of;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use vcp_clip::PromptHook;
use vcp_core::{l2norm, TextCtx, TextPrompt};

/// `[prompt] kind = "handcrafted"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandcraftedConfig {
    /// Word filling `{}` in the state phrases (`object`, or the category name with `class_name = true`).
    #[serde(default = "default_object")]
    pub object: String,
    /// Use each category's own name instead of `object` (`_` → space).
    #[serde(default)]
    pub class_name: bool,
    #[serde(default = "default_normal_states")]
    pub normal_states: Vec<String>,
    #[serde(default = "default_abnormal_states")]
    pub abnormal_states: Vec<String>,
    #[serde(default = "default_templates")]
    pub templates: Vec<String>,
}

fn default_object() -> String {
    "object".into()
}

pub fn default_normal_states() -> Vec<String> {
    [
        "{}",
        "flawless {}",
        "perfect {}",
        "unblemished {}",
        "{} without flaw",
        "{} without defect",
        "{} without damage",
    ]
    .map(String::from)
    .to_vec()
}
pub fn default_abnormal_states() -> Vec<String> {
    [
        "damaged {}",
        "broken {}",
        "{} with flaw",
        "{} with defect",
        "{} with damage",
    ]
    .map(String::from)
    .to_vec()
}
pub fn default_templates() -> Vec<String> {
    [
        "a bad photo of a {}.",
        "a low resolution photo of the {}.",
        "a bad photo of the {}.",
        "a cropped photo of the {}.",
        "a bright photo of a {}.",
        "a dark photo of the {}.",
        "a photo of my {}.",
        "a photo of the cool {}.",
        "a close-up photo of a {}.",
        "a black and white photo of the {}.",
        "a bright photo of the {}.",
        "a cropped photo of a {}.",
        "a jpeg corrupted photo of a {}.",
        "a blurry photo of the {}.",
        "a photo of the {}.",
        "a good photo of the {}.",
        "a photo of one {}.",
        "a close-up photo of the {}.",
        "a photo of a {}.",
        "a low resolution photo of a {}.",
        "a photo of a large {}.",
        "a blurry photo of a {}.",
        "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.",
        "a photo of the small {}.",
        "a photo of the large {}.",
        "a black and white photo of a {}.",
        "a dark photo of a {}.",
        "a photo of a cool {}.",
        "a photo of a small {}.",
        "there is a {} in the scene.",
        "there is the {} in the scene.",
        "this is a {} in the scene.",
        "this is the {} in the scene.",
        "this is one {} in the scene.",
    ]
    .map(String::from)
    .to_vec()
}

pub struct Handcrafted {
    cfg: HandcraftedConfig,
    cache: Mutex<HashMap<String, Tensor>>,
}

impl Handcrafted {
    pub fn new(cfg: &HandcraftedConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl TextPrompt for Handcrafted {
    fn depends_on_class_name(&self) -> bool {
        self.cfg.class_name
    }

    fn encode(
        &self,
        ctx: &TextCtx,
        _category: Option<&Tensor>,
        hook: Option<&dyn PromptHook>,
        class: &str,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let text = &ctx.clip.text;
        // A deep prompt is trainable: then nothing may be cached.
        let trainable_hook = hook.is_some();
        let hook = hook.unwrap_or(&vcp_clip::NoHook);
        if !trainable_hook {
            if let Some(t) = self.cache.lock().unwrap().get(class) {
                return Ok((t.clone(), None));
            }
        }
        let c = &self.cfg;
        let word = if c.class_name {
            class.replace('_', " ")
        } else {
            c.object.clone()
        };
        let len = text.context_length();
        let dev = text.positional_embedding().device().clone();
        let mut states = Vec::new();
        for phrases in [&c.normal_states, &c.abnormal_states] {
            let mut ids = Vec::new();
            let mut eots = Vec::new();
            for ph in phrases {
                for t in &c.templates {
                    let sentence = t.replace("{}", &ph.replace("{}", &word));
                    let (i, e) = ids_of(ctx.tokenizer, &sentence, len)?;
                    ids.extend(i);
                    eots.push(e);
                }
            }
            let n = eots.len();
            if n == 0 {
                candle_core::bail!("prompt: give at least one state phrase and one template");
            }
            let x = text.embed_ids(&Tensor::from_vec(ids, (n, len), &dev)?)?;
            let x = x.broadcast_add(text.positional_embedding())?;
            let e = l2norm(&text.forward_embeds(&x, &eots, hook)?)?; // [n, D]
            states.push(l2norm(&e.mean_keepdim(0)?)?); // [1, D]
        }
        let t = Tensor::cat(&states, 0)?.unsqueeze(0)?; // [1, 2, D]
        let t = if trainable_hook { t } else { t.detach() };
        if !trainable_hook {
            self.cache
                .lock()
                .unwrap()
                .insert(class.to_string(), t.clone());
        }
        Ok((t, None))
    }
}
