//! `advtrain merge shard-*.json --json all.json`: the reports of a sharded evaluation joined
//! into the report of the unsharded one ([`crate::eval::merge`]).

use crate::eval::EvalReport;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shards' JSON files (written by `eval --shard i/n`), in any order.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Write the merged report here (refused when it exists, unless --force).
    #[arg(long)]
    pub json: PathBuf,
    /// Replace an existing --json file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let same = |p: &PathBuf| {
        let c = |q: &PathBuf| std::fs::canonicalize(q).unwrap_or_else(|_| q.clone());
        c(p) == c(&a.json)
    };
    if let Some(p) = a.shards.iter().find(|p| same(p)) {
        anyhow::bail!(
            "--json {} is also one of the shard files ({}): give another output file",
            a.json.display(),
            p.display()
        );
    }
    anyhow::ensure!(
        a.force || !a.json.exists(),
        "--json {} exists: remove it or pass --force (a previous result is never overwritten \
         silently)",
        a.json.display()
    );
    let mut shards = vec![];
    for p in &a.shards {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the shard file {}", p.display()))?;
        let r: EvalReport = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not an eval JSON report (written by advtrain eval --shard)",
                p.display()
            )
        })?;
        shards.push((p.clone(), r));
    }
    let merged = crate::eval::merge::merge(shards)?;
    print!("{merged}");
    super::write_json(&a.json, &merged)
}
