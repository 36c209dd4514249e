//! The registry of component kinds: for each slot, `kind` → a factory that parses the slot's
//! TOML table strictly (unknown keys are errors naming the key), returns it with its defaults
//! filled in (what is hashed into a run's folder name), and builds the component.
//!
//! A component crate exposes `pub fn register(reg: &mut Registry)`; the binary builds its
//! registry once, in `main` (`vcp_model::standard_registry()` plus one line per extra crate), and
//! passes it to whatever reads a configuration or builds a model. There is no process-wide
//! registry: a test builds its own, so no test depends on another having run first.

use crate::params::Params;
use crate::slots::{CategoryTokens, DeepPrompt, FewShot, PatchHead, Refiner, TextPrompt};
use candle_core::{Device, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use vcp_clip::{Clip, Tokenizer};

/// A slot's table: `kind` plus the keys of that kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SlotConfig(pub toml::Table);

impl SlotConfig {
    /// A table of `kind` with nothing else set (the factory fills the defaults).
    pub fn of(kind: &str) -> Self {
        let mut t = toml::Table::new();
        t.insert("kind".into(), toml::Value::String(kind.into()));
        Self(t)
    }

    /// Parse `kind = "..."` and the kind's keys from TOML text (presets, tests).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text)
            .map(Self)
            .map_err(|e| e.message().to_string())
    }

    pub fn kind(&self) -> &str {
        self.0.get("kind").and_then(|v| v.as_str()).unwrap_or("")
    }

    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.0.get(key)
    }

    /// Set a key (e.g. a test turning dropout off).
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        self.0.insert(key.into(), value.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.set(key, value);
        self
    }
}

/// A slot table the registry refused, typed so that a caller can point at the line of the
/// user's file that holds it (slot table, key) without re-reading the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotError {
    /// `kind` is missing, not a string or not registered: `<slot>.kind <message>`.
    Kind { slot: &'static str, message: String },
    /// A key of the kind's table is unknown or has a wrong value: `<slot>: <message>` (serde's
    /// wording). `key` is the offending key when the message names one.
    Field {
        slot: &'static str,
        key: Option<String>,
        message: String,
    },
}

impl SlotError {
    /// The slot's table name (`refiner`, `fewshot`, ...).
    pub fn slot(&self) -> &'static str {
        match self {
            Self::Kind { slot, .. } | Self::Field { slot, .. } => slot,
        }
    }

    /// The key to point at: `kind`, the unknown or mistyped key, or `None` (the table itself).
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Kind { .. } => Some("kind"),
            Self::Field { key, .. } => key.as_deref(),
        }
    }
}

impl std::fmt::Display for SlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kind { slot, message } => write!(f, "{slot}.kind {message}"),
            Self::Field { slot, message, .. } => write!(f, "{slot}: {message}"),
        }
    }
}

impl std::error::Error for SlotError {}

/// The key named by serde's "unknown field `k`, expected ..." (the one wording that names it).
fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next().map(str::to_string)
}

/// What a factory may read and register while building its component.
pub struct BuildCtx<'a> {
    pub params: &'a mut Params,
    pub clip: &'a Clip,
    pub tokenizer: &'a Tokenizer,
    /// Number of tapped image layers.
    pub taps: usize,
    pub device: &'a Device,
}

impl BuildCtx<'_> {
    /// Text tower width `W`.
    pub fn text_width(&self) -> usize {
        self.clip.text.width()
    }
    /// Vision tower width `Wv`.
    pub fn vision_width(&self) -> usize {
        self.clip.vision.width()
    }
    /// Joint embedding dim `D`.
    pub fn embed_dim(&self) -> Result<usize> {
        Ok(self.clip.text.embed_dim()?)
    }
    /// Text tower depth.
    pub fn text_layers(&self) -> usize {
        self.clip.text.depth()
    }
}

/// One kind of one slot.
pub trait Factory<T: ?Sized>: Send + Sync {
    /// Parse the kind's keys (`kind` removed) strictly; return them with defaults filled in.
    fn normalize(&self, table: &toml::Table) -> std::result::Result<toml::Table, String>;
    /// Build from a normalised table; `None` is the slot's "off" (e.g. `refiner.kind = "identity"`).
    fn build(&self, table: &toml::Table, ctx: &mut BuildCtx) -> Result<Option<Box<T>>>;
    /// One line for `--help`-style listings.
    fn doc(&self) -> &'static str;
}

type BuildFn<C, T> = fn(&C, &mut BuildCtx) -> Result<Option<Box<T>>>;

/// A factory from a serde config type `C` (write it with `#[serde(deny_unknown_fields)]` and
/// defaults) and a build function.
struct Typed<C, T: ?Sized> {
    build: BuildFn<C, T>,
    doc: &'static str,
    _c: PhantomData<fn() -> C>,
}

impl<C, T> Factory<T> for Typed<C, T>
where
    C: DeserializeOwned + Serialize + 'static,
    T: ?Sized + 'static,
{
    fn normalize(&self, table: &toml::Table) -> std::result::Result<toml::Table, String> {
        let c: C = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())?;
        toml::Table::try_from(&c).map_err(|e| e.to_string())
    }
    fn build(&self, table: &toml::Table, ctx: &mut BuildCtx) -> Result<Option<Box<T>>> {
        let c: C = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| candle_core::Error::Msg(e.message().to_string()))?;
        (self.build)(&c, ctx)
    }
    fn doc(&self) -> &'static str {
        self.doc
    }
}

/// The kinds of one slot.
pub struct Slot<T: ?Sized> {
    pub name: &'static str,
    kinds: BTreeMap<String, Box<dyn Factory<T>>>,
}

impl<T: ?Sized + 'static> Slot<T> {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            kinds: BTreeMap::new(),
        }
    }

    /// Register `kind` with its config type `C` and build function.
    ///
    /// # Panics
    /// When `kind` is already registered in this slot (a wiring mistake of the binary, found
    /// the first time it runs).
    pub fn register<C>(&mut self, kind: &str, doc: &'static str, build: BuildFn<C, T>)
    where
        C: DeserializeOwned + Serialize + 'static,
    {
        self.register_factory(
            kind,
            Box::new(Typed {
                build,
                doc,
                _c: PhantomData,
            }),
        );
    }

    /// Register a hand-written factory.
    pub fn register_factory(&mut self, kind: &str, f: Box<dyn Factory<T>>) {
        let old = self.kinds.insert(kind.to_string(), f);
        assert!(
            old.is_none(),
            "{}.kind = \"{kind}\" is registered twice",
            self.name
        );
    }

    pub fn kinds(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.kinds.iter().map(|(k, f)| (k.as_str(), f.doc()))
    }

    fn factory(&self, cfg: &SlotConfig) -> std::result::Result<&dyn Factory<T>, SlotError> {
        let err = |message: String| SlotError::Kind {
            slot: self.name,
            message,
        };
        let kind = match cfg.0.get("kind") {
            Some(toml::Value::String(k)) => k,
            Some(_) => return Err(err("must be a string".into())),
            None => return Err(err("is missing".into())),
        };
        self.kinds.get(kind).map(|f| f.as_ref()).ok_or_else(|| {
            err(format!(
                "= \"{kind}\" is not a registered kind (known: {})",
                self.kinds.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The table with its defaults filled in. Errors are typed ([`SlotError`]); their text
    /// starts with the slot's name and keeps serde's wording (e.g. ``unknown field `x` ``).
    pub fn normalize(&self, cfg: &SlotConfig) -> std::result::Result<SlotConfig, SlotError> {
        let f = self.factory(cfg)?;
        let mut rest = cfg.0.clone();
        let kind = rest.remove("kind").expect("checked by factory()");
        let filled = f.normalize(&rest).map_err(|message| SlotError::Field {
            slot: self.name,
            key: unknown_field(&message),
            message,
        })?;
        let mut out = toml::Table::new();
        out.insert("kind".into(), kind);
        out.extend(filled);
        Ok(SlotConfig(out))
    }

    pub fn build(&self, cfg: &SlotConfig, ctx: &mut BuildCtx) -> Result<Option<Box<T>>> {
        let f = self
            .factory(cfg)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut rest = cfg.0.clone();
        rest.remove("kind");
        f.build(&rest, ctx).map_err(|e| {
            let m = e.to_string();
            // Messages that already name the slot's keys (`fewshot.k ...`) are kept as they are.
            candle_core::Error::Msg(if m.starts_with(self.name) {
                m
            } else {
                format!("{}: {m}", self.name)
            })
        })
    }
}

/// Every slot's kinds.
pub struct Registry {
    pub prompt: Slot<dyn TextPrompt>,
    pub deep_prompt: Slot<dyn DeepPrompt>,
    pub category: Slot<dyn CategoryTokens>,
    pub refiner: Slot<dyn Refiner>,
    pub head: Slot<dyn PatchHead>,
    pub fewshot: Slot<dyn FewShot>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::empty()
    }
}

impl Registry {
    /// No kinds at all (component crates add theirs with their `register`).
    pub fn empty() -> Self {
        Self {
            prompt: Slot::new("prompt"),
            deep_prompt: Slot::new("deep_prompt"),
            category: Slot::new("category"),
            refiner: Slot::new("refiner"),
            head: Slot::new("head"),
            fewshot: Slot::new("fewshot"),
        }
    }

    /// Chainable registration: `reg.with(vcp_example_refiner::register)`.
    pub fn with(mut self, register: impl FnOnce(&mut Registry)) -> Self {
        register(&mut self);
        self
    }

    /// `slot: kind, kind, ...` per slot, for help texts.
    pub fn describe(&self) -> String {
        fn line<T: ?Sized + 'static>(s: &Slot<T>) -> String {
            format!(
                "{}: {}",
                s.name,
                s.kinds().map(|(k, _)| k).collect::<Vec<_>>().join(", ")
            )
        }
        [
            line(&self.prompt),
            line(&self.deep_prompt),
            line(&self.category),
            line(&self.refiner),
            line(&self.head),
            line(&self.fewshot),
        ]
        .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Refiner for Nothing {
        fn refine(
            &self,
            text: &candle_core::Tensor,
            _: &candle_core::Tensor,
            _: Option<&mut crate::Trace>,
        ) -> Result<candle_core::Tensor> {
            Ok(text.clone())
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default = "three")]
        heads: usize,
        #[serde(default)]
        scaled: bool,
    }
    fn three() -> usize {
        3
    }

    fn reg() -> Registry {
        let mut r = Registry::empty();
        r.refiner
            .register::<Cfg>("toy", "a toy", |_, _| Ok(Some(Box::new(Nothing))));
        r
    }

    #[test]
    fn normalize_fills_defaults_and_rejects_unknown_keys() {
        let r = reg();
        let n = r
            .refiner
            .normalize(&SlotConfig::of("toy").with("scaled", true))
            .unwrap();
        assert_eq!(n.kind(), "toy");
        assert_eq!(n.get("heads").and_then(|v| v.as_integer()), Some(3));
        assert_eq!(n.get("scaled").and_then(|v| v.as_bool()), Some(true));
        let e = r
            .refiner
            .normalize(&SlotConfig::of("toy").with("head", 2))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("refiner: unknown field `head`"),
            "{e}"
        );
        assert_eq!((e.slot(), e.key()), ("refiner", Some("head")));
        let e = r.refiner.normalize(&SlotConfig::of("nope")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "refiner.kind = \"nope\" is not a registered kind (known: toy)"
        );
        assert_eq!((e.slot(), e.key()), ("refiner", Some("kind")));
        let e = r
            .refiner
            .normalize(&SlotConfig(toml::Table::new()))
            .unwrap_err();
        assert_eq!(e.to_string(), "refiner.kind is missing");
        assert_eq!(e.key(), Some("kind"));
        let e = r
            .refiner
            .normalize(&SlotConfig::of("toy").with("kind", 3))
            .unwrap_err();
        assert_eq!(e.to_string(), "refiner.kind must be a string");
        let e = r
            .refiner
            .normalize(&SlotConfig::of("toy").with("heads", "two"))
            .unwrap_err();
        assert!(e.to_string().starts_with("refiner: invalid type"), "{e}");
        assert_eq!(e.slot(), "refiner");
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_kind_registered_twice_is_a_wiring_error() {
        let mut r = reg();
        r.refiner.register::<Cfg>("toy", "again", |_, _| Ok(None));
    }
}
