//! `advtrain eval` launched as N workers (torchrun, srun, a loop setting `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`): worker r evaluates shard r/N of the points
//! (`--shard` with blocked batching, [`Shard`]) and writes it beside the merged report as
//! `<stem>.shard-r-of-N.json`; then the workers meet (a c10d rendezvous and barrier over Gloo)
//! and rank 0 joins the shards ([`super::merge::merge`]) into the report the unsharded
//! evaluation with blocked batching writes, field for field (times summed).
//!
//! The meeting happens after the evaluation, not before: shards of an AutoAttack cascade take
//! different times, and a collective held open across the whole evaluation would time out.
//! The rendezvous waits up to `timeout` for every worker; a worker that failed or was killed
//! never arrives, so the others fail with the rendezvous error naming the address (its own
//! error is in its log). A rerun of the same command continues every shard from its
//! AutoAttack state file and skips none: the merge needs all of them.

use super::merge::{merge, read_shards};
use super::plan::Shard;
use super::report::EvalReport;
use crate::dist::{Backend, LaunchEnv, ProcessGroup};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// This process as one of several evaluation workers.
#[derive(Debug, Clone)]
pub struct Workers {
    pub env: LaunchEnv,
    /// How long the final rendezvous waits for the slowest worker.
    pub timeout: Duration,
}

impl Workers {
    /// Some when the launch variables say `WORLD_SIZE` > 1; malformed variables are an error.
    pub fn from_env(timeout: Duration) -> Result<Option<Workers>> {
        let env = LaunchEnv::from_env()?.filter(|e| e.world_size > 1);
        Ok(env.map(|env| Workers { env, timeout }))
    }

    /// This worker's shard: `RANK/WORLD_SIZE`.
    pub fn shard(&self) -> Shard {
        Shard {
            index: self.env.rank,
            count: self.env.world_size,
        }
    }

    /// The shard file of worker `rank` beside `merged`: `dir/all.json` -> `dir/all.shard-1-of-4.json`.
    pub fn shard_file(&self, merged: &Path, rank: usize) -> PathBuf {
        shard_file(merged, rank, self.env.world_size)
    }

    /// After this worker wrote its shard file: wait for every worker (rendezvous + barrier);
    /// rank 0 then reads every shard file and returns the merged report (the others None).
    pub fn meet_and_merge(&self, merged: &Path) -> Result<Option<EvalReport>> {
        let group =
            ProcessGroup::new(&self.env, Backend::Gloo, self.timeout).with_context(|| {
                format!(
                    "the evaluation workers could not meet to merge their shards into {} (did \
                 another worker fail? its log says why; rerun the same command to continue)",
                    merged.display()
                )
            })?;
        group.barrier()?;
        if self.env.rank != 0 {
            return Ok(None);
        }
        let files: Vec<PathBuf> = (0..self.env.world_size)
            .map(|r| self.shard_file(merged, r))
            .collect();
        let shards = read_shards(&files)?;
        merge(shards).map(Some)
    }
}

/// The report files of an evaluation: (merged report, this process's JSON). This process's
/// JSON is `json`, else `<run>/eval/<stem>.json`, a shard's `<stem>.shard-I-of-N.json`; a
/// launched worker's is its shard file beside the merged report (rank 0's to write), whose
/// name is the unsharded one.
pub fn report_files(
    json: Option<&Path>,
    run: Option<&Path>,
    stem: &str,
    shard: Option<Shard>,
    workers: Option<&Workers>,
) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    let in_run = |suffix: String| run.map(|r| r.join("eval").join(format!("{stem}{suffix}.json")));
    let pick = |suffix| json.map(Path::to_path_buf).or_else(|| in_run(suffix));
    let merged = workers.and(pick(String::new()));
    let own = match (workers, &merged) {
        (Some(w), Some(m)) => Some(w.shard_file(m, w.env.rank)),
        _ => pick(shard.map_or(String::new(), |s| {
            format!(".shard-{}-of-{}", s.index, s.count)
        })),
    };
    anyhow::ensure!(
        shard.is_none() || own.is_some(),
        "--shard (or a launch as several workers) needs --json FILE or --run DIR (each shard \
         writes its own report)"
    );
    Ok((merged, own))
}

/// `dir/all.json` -> `dir/all.shard-R-of-N.json` (any extension is replaced by `.json`).
pub fn shard_file(merged: &Path, rank: usize, count: usize) -> PathBuf {
    let stem = merged
        .file_stem()
        .map_or("eval".into(), |s| s.to_string_lossy());
    merged.with_file_name(format!("{stem}.shard-{rank}-of-{count}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_files_sit_beside_the_merged_report() {
        let p = shard_file(Path::new("runs/x/eval/aa.json"), 2, 4);
        assert_eq!(p, PathBuf::from("runs/x/eval/aa.shard-2-of-4.json"));
        assert_eq!(
            shard_file(Path::new("all"), 0, 2),
            PathBuf::from("all.shard-0-of-2.json")
        );
    }

    #[test]
    fn report_files_name_shards_and_the_merged_report() {
        let run = Path::new("r");
        let s = Some(Shard { index: 1, count: 3 });
        let (m, own) = report_files(None, Some(run), "pgd-eps0.1", s, None).unwrap();
        let want = PathBuf::from("r/eval/pgd-eps0.1.shard-1-of-3.json");
        assert_eq!((m, own), (None, Some(want)));
        let (m, own) = report_files(Some(Path::new("a.json")), None, "x", None, None).unwrap();
        assert_eq!((m, own), (None, Some(PathBuf::from("a.json"))));
        assert!(report_files(None, None, "x", s, None).is_err());
        assert_eq!(
            report_files(None, None, "x", None, None).unwrap(),
            (None, None)
        );
    }
}
