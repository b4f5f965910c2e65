//! `advtrain merge shard-*.json --json all.json`: the reports of a sharded evaluation joined
//! into the report of the unsharded one ([`crate::eval::merge`]).

use anyhow::Result;
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
    let shards = crate::eval::merge::read_shards(&a.shards)?;
    let merged = crate::eval::merge::merge(shards)?;
    print!("{merged}");
    super::write_json(&a.json, &merged)
}
