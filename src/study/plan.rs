//! `study plan`: the exact commands of a study, as a shell script (one command per line), a
//! Slurm array script (one array task per run) or JSON (the resolved study).

use super::spec::{Step, Study};
use std::path::Path;

/// Output formats of `study plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Shell,
    Slurm,
    Json,
}

crate::choice::value_enum_text!(PlanFormat => "plan format");

/// `s` quoted for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A command line as one shell line.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The whole command line of a step.
pub fn command_line(exe: &Path, threads: usize, step: &Step) -> Vec<String> {
    let mut v = vec![
        exe.display().to_string(),
        "--threads".into(),
        threads.to_string(),
    ];
    v.extend(step.args.iter().cloned());
    v
}

/// The commands of one run, one line each, in order (its logs' folder made first).
fn run_lines(study: &Study, exe: &Path, threads: usize, r: &super::spec::Run) -> Vec<String> {
    let mut lines = vec![];
    for s in &r.steps {
        let cmd = shell_join(&command_line(exe, threads, s));
        lines.push(cmd);
    }
    // The run's report.html with its evaluations (`study run` writes it in-process).
    let _ = study;
    lines.push(shell_join(&[
        exe.display().to_string(),
        "report".into(),
        r.dir.display().to_string(),
    ]));
    lines
}

/// The plan in `format`. `exe` is the binary named in the commands, `threads` their
/// `--threads`.
pub fn render(study: &Study, format: PlanFormat, exe: &Path, threads: usize) -> String {
    match format {
        PlanFormat::Json => serde_json::to_string_pretty(study).expect("serialisable") + "\n",
        PlanFormat::Shell => {
            let mut s = format!(
                "# study {} ({}): {} runs, {} commands; each command is resumable (train --resume;\n\
                 # `advtrain study run` skips what is done)\nset -e\n",
                study.study,
                study.file.display(),
                study.runs.len(),
                study.steps().count()
            );
            for r in &study.runs {
                s.push_str(&format!("# {}\n", r.id()));
                for l in run_lines(study, exe, threads, r) {
                    s.push_str(&l);
                    s.push('\n');
                }
            }
            s
        }
        PlanFormat::Slurm => {
            let n = study.runs.len();
            let mut s = format!(
                "#!/bin/bash\n# study {} ({}): one array task per run, its commands in order.\n\
                 #SBATCH --job-name={}\n#SBATCH --array=0-{}\n#SBATCH --cpus-per-task={threads}\n\
                 #SBATCH --output={}/logs/slurm-%A_%a.out\nset -euo pipefail\nmkdir -p {}/logs\ncase \"$SLURM_ARRAY_TASK_ID\" in\n",
                study.study,
                study.file.display(),
                shell_quote(&study.study),
                n.saturating_sub(1),
                study.out.display(),
                shell_quote(&study.out.display().to_string()),
            );
            for (i, r) in study.runs.iter().enumerate() {
                s.push_str(&format!("  {i}) # {}\n", r.id()));
                for l in run_lines(study, exe, threads, r) {
                    s.push_str(&format!("    {l}\n"));
                }
                s.push_str("    ;;\n");
            }
            s.push_str("  *) echo \"no run for task $SLURM_ARRAY_TASK_ID\" >&2; exit 1 ;;\nesac\n");
            s
        }
    }
}
