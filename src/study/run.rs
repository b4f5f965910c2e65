//! `study run`: every run's commands as subprocesses of the same binary, `jobs` lanes side by
//! side, each lane one run at a time (train, then its evaluations and analyses in order).
//!
//! A step is done when its output exists (train: `summary.json` with the study's resolved
//! recipe; eval: its JSON; analysis: `<out>/<kind>.json`): done steps are skipped, so a killed
//! study continues where it stopped (`train --resume` continues a killed training). A run whose
//! stored `recipe.toml` differs from the study's (beyond `train.epochs`) is refused before
//! anything starts. A failing step ends its run (the later steps of that run are skipped) and is
//! reported at the end with its log; the other runs go on. The output folder is locked
//! ([`DirLock`]) for the whole study.

pub use super::plan::command_line;
use super::plan::shell_join;
use super::spec::{Run, Step, StepKind, Study, STUDY_JSON};
use crate::fsio::{write_atomic, DirLock};
use crate::train::Recipe;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How `study run` runs the study.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The `advtrain` binary the steps run.
    pub exe: PathBuf,
    /// Lanes side by side (>= 1).
    pub jobs: usize,
    /// `--threads` of every step.
    pub threads_per_job: usize,
    /// Continue a study whose folder already holds it.
    pub resume: bool,
    /// Run only the runs whose name (`<cell>-seed<k>`) matches one of these globs (all when
    /// empty); the others are left as they are, for a later `study run`.
    pub only: Vec<String>,
}

/// A step that failed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    pub run: String,
    pub step: String,
    pub status: String,
    pub log: PathBuf,
}

/// What `study run` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub runs: usize,
    /// Runs whose every step was already done.
    pub skipped: usize,
    pub completed: usize,
    /// Runs not done that `--only` left for later.
    pub left: usize,
    pub failures: Vec<Failure>,
    /// Stopped by SIGINT/SIGTERM before every run was done.
    pub interrupted: bool,
}

impl Outcome {
    /// The summary `study run` prints: the counts of study `name`, then one line per failure.
    pub fn summary(&self, name: &str) -> String {
        let mut s = format!(
            "study {name}: {} runs: {} already done, {} completed now, {} failed{}{}",
            self.runs,
            self.skipped,
            self.completed,
            self.failures.len(),
            if self.left > 0 {
                format!(", {} left for later (not matched by --only)", self.left)
            } else {
                String::new()
            },
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        for f in &self.failures {
            s += &format!(
                "\n  FAILED {} at {} ({}): log {}",
                f.run,
                f.step,
                f.status,
                f.log.display()
            );
        }
        s
    }
}

/// The runs `only` selects (all when empty): every glob must match a run of the study, so a
/// mistyped pattern is an error that lists the run names, not a study that runs nothing.
pub fn select_runs<'a>(study: &'a Study, only: &[String]) -> Result<Vec<&'a Run>> {
    if only.is_empty() {
        return Ok(study.runs.iter().collect());
    }
    let patterns = only
        .iter()
        .map(|p| {
            glob::Pattern::new(p)
                .with_context(|| format!("--only {p}: not a glob pattern of run names"))
        })
        .collect::<Result<Vec<_>>>()?;
    for (text, p) in only.iter().zip(&patterns) {
        if !study.runs.iter().any(|r| p.matches(&r.id())) {
            let names: Vec<String> = study.runs.iter().map(|r| r.id()).collect();
            bail!(
                "--only {text}: matches no run of study `{}` (its runs: {})",
                study.study,
                names.join(", ")
            );
        }
    }
    Ok(study
        .runs
        .iter()
        .filter(|r| patterns.iter().any(|p| p.matches(&r.id())))
        .collect())
}

/// Name of the study's lock file in its output folder.
pub const LOCK_FILE: &str = ".study.lock";

/// The resolved recipe of a run folder differs from the study's: the lines that differ
/// (train.epochs aside), or None when they agree.
fn recipe_difference(run: &Run) -> Result<Option<String>> {
    let saved = run.dir.join("recipe.toml");
    let Some(mine) = &run.recipe else {
        return Ok(None);
    };
    if !saved.exists() {
        return Ok(None);
    }
    let stored = Recipe::load(&saved, &[])
        .with_context(|| format!("run {}: cannot read its {}", run.id(), saved.display()))?;
    let (mut a, mut b) = (stored.clone(), mine.clone());
    a.train.epochs = 0;
    b.train.epochs = 0;
    if a == b {
        return Ok(None);
    }
    let (ta, tb) = (a.to_toml(), b.to_toml());
    let diff: Vec<String> = ta
        .lines()
        .filter(|l| !tb.lines().any(|m| m == *l))
        .map(|l| format!("    stored: {l}"))
        .chain(
            tb.lines()
                .filter(|l| !ta.lines().any(|m| m == *l))
                .map(|l| format!("    study:  {l}")),
        )
        .collect();
    Ok(Some(diff.join("\n")))
}

/// Whether `step` of `run` is done.
pub fn step_done(run: &Run, step: &Step) -> bool {
    if !step.output.is_file() {
        return false;
    }
    match step.kind {
        // Finished at the study's number of epochs (a study that raised train.epochs resumes).
        StepKind::Train => match (&run.recipe, Recipe::load(&run.dir.join("recipe.toml"), &[])) {
            (Some(mine), Ok(stored)) => stored == *mine,
            _ => false,
        },
        _ => true,
    }
}

/// Write the resolved study into its folder (`study.json`) and a copy of the study file
/// (`study.toml`).
fn record(study: &Study) -> Result<()> {
    let json = serde_json::to_string_pretty(study)?;
    write_atomic(&study.out.join(STUDY_JSON), json.as_bytes())?;
    let text = std::fs::read(&study.file)
        .with_context(|| format!("cannot read {}", study.file.display()))?;
    write_atomic(&study.out.join("study.toml"), &text)
}

/// Run the study (see the module docs). Errors before anything starts (a locked folder, an
/// earlier study in it without `resume`, a run with a different recipe); step failures are in
/// the [`Outcome`].
pub fn run_study(study: &Study, settings: &RunSettings) -> Result<Outcome> {
    anyhow::ensure!(settings.jobs >= 1, "--jobs must be >= 1");
    anyhow::ensure!(
        settings.threads_per_job >= 1,
        "--threads-per-job must be >= 1"
    );
    let selected = select_runs(study, &settings.only)?;
    let out = &study.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let _lock = DirLock::acquire(
        &out.join(LOCK_FILE),
        &format!("study folder {}", out.display()),
    )?;
    let stored = out.join(STUDY_JSON);
    if stored.exists() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&stored)?)
            .with_context(|| format!("{} is not valid JSON", stored.display()))?;
        let other = v["study"].as_str().unwrap_or("?");
        anyhow::ensure!(
            other == study.study,
            "{} holds study `{other}`, not `{}`: choose another output folder (--out)",
            out.display(),
            study.study
        );
        anyhow::ensure!(
            settings.resume,
            "{} already holds study `{}`: pass --resume to continue it (finished steps are skipped)",
            out.display(),
            study.study
        );
    }
    let mut mismatched = vec![];
    for r in &study.runs {
        if let Some(diff) = recipe_difference(r)? {
            mismatched.push(format!(
                "  {} ({}/recipe.toml):\n{diff}",
                r.id(),
                r.dir.display()
            ));
        }
    }
    if !mismatched.is_empty() {
        bail!(
            "runs of {} were made with another recipe than the study's (refusing to reuse or resume them; \
             remove those run folders or use another --out):\n{}",
            out.display(),
            mismatched.join("\n")
        );
    }
    record(study)?;
    crate::interrupt::install();

    // Each run's steps are checked once (a train step reads its recipe.toml).
    let not_done: Vec<&Run> = study
        .runs
        .iter()
        .filter(|r| !r.steps.iter().all(|s| step_done(r, s)))
        .collect();
    let pending: Vec<&Run> = not_done
        .iter()
        .copied()
        .filter(|r| selected.iter().any(|s| std::ptr::eq(*s, *r)))
        .collect();
    let mut outcome = Outcome {
        runs: study.runs.len(),
        skipped: study.runs.len() - not_done.len(),
        left: not_done.len() - pending.len(),
        ..Default::default()
    };
    eprintln!(
        "study {}: {} runs ({} cells x {} seeds), {} already done, {} to run{} on {} lane(s) x {} thread(s); output {}",
        study.study,
        study.runs.len(),
        study.cells.len(),
        study.seeds.len(),
        outcome.skipped,
        pending.len(),
        if outcome.left > 0 {
            format!(" ({} left for later: --only)", outcome.left)
        } else {
            String::new()
        },
        settings.jobs,
        settings.threads_per_job,
        out.display()
    );
    if pending.is_empty() {
        return Ok(outcome);
    }
    let progress = Progress::new(pending.len() as u64);
    let queue = Arc::new(Mutex::new(pending.into_iter().collect::<Vec<_>>()));
    let results = Arc::new(Mutex::new((0usize, Vec::<Failure>::new())));
    let running = Arc::new(Mutex::new(Vec::<String>::new()));
    std::thread::scope(|scope| {
        for _ in 0..settings.jobs {
            let (queue, results, running, progress) = (&queue, &results, &running, &progress);
            scope.spawn(move || loop {
                if crate::interrupt::requested().is_some() {
                    break;
                }
                let next = {
                    let mut q = queue.lock().unwrap();
                    (!q.is_empty()).then(|| q.remove(0))
                };
                let Some(run) = next else { break };
                let started = Instant::now();
                let mut failure = run_one(run, settings, running, progress);
                // The run's own report.html, now with its evaluations and analyses.
                if failure.is_none() {
                    if let Err(e) = crate::report::run::write_run_report(&run.dir) {
                        failure = Some(Failure {
                            run: run.id(),
                            step: "report".into(),
                            status: format!("{e:#}"),
                            log: run.dir.join("report.html"),
                        });
                    }
                }
                let mut res = results.lock().unwrap();
                match failure {
                    None => {
                        res.0 += 1;
                        progress.done(&format!(
                            "done {} ({:.0} s)",
                            run.id(),
                            started.elapsed().as_secs_f64()
                        ));
                    }
                    Some(f) => {
                        progress.done(&format!(
                            "FAILED {} at {} ({}): see {}",
                            f.run,
                            f.step,
                            f.status,
                            f.log.display()
                        ));
                        res.1.push(f);
                    }
                }
            });
        }
    });
    progress.finish();
    let (completed, failures) = std::mem::take(&mut *results.lock().unwrap());
    outcome.completed = completed;
    outcome.failures = failures;
    outcome.interrupted = crate::interrupt::requested().is_some();
    Ok(outcome)
}

/// Run the steps of one run that are not done; the first failure ends it.
fn run_one(
    run: &Run,
    settings: &RunSettings,
    running: &Mutex<Vec<String>>,
    progress: &Progress,
) -> Option<Failure> {
    for step in &run.steps {
        if step_done(run, step) {
            continue;
        }
        if crate::interrupt::requested().is_some() {
            return Some(Failure {
                run: run.id(),
                step: step.label.clone(),
                status: "not started: interrupted".into(),
                log: step.log.clone(),
            });
        }
        let tag = format!("{} {}", run.id(), step.label);
        running.lock().unwrap().push(tag.clone());
        progress.running(&running.lock().unwrap());
        let status = exec(step, settings);
        running.lock().unwrap().retain(|t| *t != tag);
        progress.running(&running.lock().unwrap());
        let failed = match status {
            Ok(s) if s.success() && step.output.is_file() => None,
            Ok(s) if s.success() => {
                Some(format!("exit 0 but {} is missing", step.output.display()))
            }
            Ok(s) => Some(describe(s)),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(status) = failed {
            return Some(Failure {
                run: run.id(),
                step: step.label.clone(),
                status,
                log: step.log.clone(),
            });
        }
    }
    None
}

fn describe(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".into(),
    }
}

/// Run one step as a subprocess, its output appended to its log.
fn exec(step: &Step, settings: &RunSettings) -> Result<std::process::ExitStatus> {
    if let Some(dir) = step.log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let argv = command_line(&settings.exe, settings.threads_per_job, step);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&step.log)
        .with_context(|| format!("cannot open {}", step.log.display()))?;
    writeln!(
        log,
        "== {} (unix time {}): {}",
        step.label,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        shell_join(&argv)
    )?;
    let err = log.try_clone()?;
    Command::new(&argv[0])
        .args(&argv[1..])
        .env("OMP_NUM_THREADS", settings.threads_per_job.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .status()
        .with_context(|| format!("cannot start {}", argv[0]))
}

/// One progress display: runs done / total, the running steps, ETA (indicatif); when stderr
/// is not a terminal, plain lines instead.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} runs, ETA {eta}  running: {wide_msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(500));
        Progress { bar }
    }

    fn running(&self, tags: &[String]) {
        self.bar.set_message(tags.join(", "));
    }

    fn done(&self, line: &str) {
        self.bar.inc(1);
        let text = format!(
            "[{}/{}] {line}",
            self.bar.position(),
            self.bar.length().unwrap_or(0)
        );
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
