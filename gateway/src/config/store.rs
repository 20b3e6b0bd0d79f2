//! `[store]`: where the journal lives and how much one group commit may hold.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[store]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory holding `yijian.db`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Most commands per group commit.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_batch() -> usize {
    1024
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: default_data_dir(),
            max_batch: default_max_batch(),
        }
    }
}
