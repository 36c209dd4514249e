//! The record of one finished run (`record.json`, written last: its presence marks the run
//! done), shared by the runner that writes it and the tables and plots that read it.

use serde::{Deserialize, Serialize};
use vcp_metrics::CategoryMetrics;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub experiment: String,
    pub variant: String,
    pub seed: u64,
    /// Hash of the resolved configuration (and device class): the run's identity.
    pub hash: String,
    pub dataset: Datasets,
    pub git: Git,
    /// The command line that started the run.
    #[serde(default)]
    pub command: String,
    /// candle's device, e.g. `Cpu`.
    pub device: String,
    pub dtype: vcp_model::config::ComputeDtype,
    /// RFC 3339 UTC.
    pub start: String,
    pub end: String,
    pub wall_seconds: WallSeconds,
    pub peak_rss_mib: Option<f64>,
    pub trainable_parameters: usize,
    pub checkpoint_sha256: Option<String>,
    /// Mean loss per epoch.
    pub train_loss: Vec<f64>,
    pub metrics: Metrics,
    /// Undefined metrics and the like, one line each.
    pub notes: Vec<String>,
    /// Overlays kept in the run folder.
    pub qualitative: Vec<Qualitative>,
    /// Few-shot: the reference images of each test category.
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub fewshot_references: OrderedMap<Vec<String>>,
    /// Test images of each category, `[normal, defective]` (tables say how many).
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub test_images: OrderedMap<[usize; 2]>,
    /// The process that ran it (several processes may work on one experiment).
    #[serde(default)]
    pub worker: Option<crate::lock::Holder>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Datasets {
    pub train: Option<String>,
    pub eval: String,
}

/// The build's git state (embedded at compile time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Git {
    pub commit: Option<String>,
    pub dirty: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WallSeconds {
    pub total: f64,
    pub train: f64,
    pub eval: f64,
    /// Frozen-backbone forwards (features not served by the cache).
    pub backbone: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Unweighted mean over categories.
    pub mean: CategoryMetrics,
    /// Per category, in the dataset's order.
    pub categories: OrderedMap<CategoryMetrics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qualitative {
    /// Dataset-relative image path.
    pub img_path: String,
    /// Overlay file, relative to the run folder.
    pub file: String,
}

impl Record {
    /// Read a `record.json`; errors name the file. A record whose metrics could not come from
    /// our evaluation (a score outside [0, 1], not finite; a category twice) is refused, so an
    /// edited or damaged record is never averaged into a table.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = vcp_data::io::read_regular_string(path, 64 << 20)?;
        let r: Record =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        r.check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(r)
    }

    /// The metric values are scores in [0, 1] and each category appears once.
    fn check(&self) -> Result<(), String> {
        let all = std::iter::once(("mean", &self.metrics.mean)).chain(
            self.metrics
                .categories
                .0
                .iter()
                .map(|(c, m)| (c.as_str(), m)),
        );
        for (where_, m) in all {
            for col in vcp_metrics::COLUMNS {
                if let Some(v) = m.get(col) {
                    if !(0.0..=1.0).contains(&v) {
                        return Err(format!(
                            "metrics of `{where_}`: {col} = {v} is not a score in [0, 1]"
                        ));
                    }
                }
            }
        }
        let cats: Vec<&String> = self.metrics.categories.keys().collect();
        for (i, c) in cats.iter().enumerate() {
            if cats[..i].contains(c) {
                return Err(format!("category `{c}` appears twice in the metrics"));
            }
        }
        Ok(())
    }

    /// The run's folder under `results/<experiment>` (`runs/<variant>-<hash8>`, as
    /// `RunSpec::dir` names it).
    pub fn run_dir(&self, exp_dir: &std::path::Path) -> std::path::PathBuf {
        exp_dir.join("runs").join(format!(
            "{}-{}",
            crate::experiment::slug(&self.variant),
            &self.hash[..8.min(self.hash.len())]
        ))
    }

    /// A category's metric by column name.
    pub fn category_metric(&self, category: &str, column: &str) -> Option<f64> {
        self.metrics
            .categories
            .get(category)
            .and_then(|m| m.get(column))
    }
}

/// A JSON object whose keys keep their order (categories in the dataset's order), as a `Vec`
/// of pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<T>(pub Vec<(String, T)>);

impl<T> Default for OrderedMap<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> OrderedMap<T> {
    pub fn get(&self, k: &str) -> Option<&T> {
        self.0.iter().find(|(c, _)| c == k).map(|(_, m)| m)
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(c, _)| c)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Serialize> Serialize for OrderedMap<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrderedMap<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = OrderedMap<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, m)) = a.next_entry::<String, T>()? {
                    v.push((k, m));
                }
                Ok(OrderedMap(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}
