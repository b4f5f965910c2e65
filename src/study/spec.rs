//! Study files: a grid of runs (recipes x variants x override grid x seeds) and the evaluations
//! and analyses of every run, resolved into the exact `advtrain` commands of each run.
//!
//! The format is described in docs/STUDIES.md. Evaluation and analysis tables hold the flags of
//! `advtrain eval` / `advtrain analyze KIND` as keys; they are checked against the clap command
//! definitions the caller passes ([`Study::load`] takes the root `clap::Command`), so every flag
//! of those commands is available and an unknown key or a bad value is an error naming the file,
//! the table and the key.

use crate::nn::norm::{domain_name, Domain};
use crate::nn::Route;
use crate::train::Recipe;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A study file as written (`deny_unknown_fields`: a misspelt key is an error).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyFile {
    /// Study name (default: the file stem).
    name: Option<String>,
    /// Output folder (default `runs/<name>`).
    out: Option<PathBuf>,
    /// Recipe files or glob patterns (relative to the working directory).
    recipes: Vec<String>,
    /// Seeds of every cell (`train --seed S`; default `[0]`).
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    /// Overrides of every run (`train --set key=value`), dotted keys.
    #[serde(default)]
    set: toml::Table,
    /// Named override sets: each cell exists once per variant.
    #[serde(default)]
    variants: toml::Table,
    /// Dotted key -> list of values: the cells are the product of the lists.
    #[serde(default)]
    grid: toml::Table,
    /// Named evaluations of every run: the flags of `advtrain eval`.
    #[serde(default)]
    eval: toml::Table,
    /// Named analyses of every run: `kind` and the flags of `advtrain analyze KIND`.
    #[serde(default)]
    analysis: toml::Table,
    #[serde(default)]
    report: ReportSpec,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// The `[report]` table: what `study report` adds to the per-evaluation tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// Paired differences `a - b` over the seeds both have, per evaluation: `["cell-a",
    /// "cell-b"]`, each optionally `cell@route` (route tag, e.g. `e7-dual-ap@adv`).
    #[serde(default)]
    pub compare: Vec<[String; 2]>,
}

/// Which routes an evaluation or analysis runs through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routes {
    /// The `--route` flag of the table (or the command's default); no suffix on the output.
    Fixed,
    /// Every distinct route the recipe's objective trains and validates, after merging the
    /// domains the model shares (a single-BN model has one: `clean`).
    AllBranches,
    /// The one route the recipe validates on (its robust branch: a hybrid model's adversarial
    /// route, a single-BN model's only one, `clean`), written as [`all_branches`] writes it.
    RobustBranch,
    /// These routes (`clean`, `adv`, `ns=clean,ap=adv`).
    List(Vec<String>),
}

/// One named evaluation (`[eval.NAME]`) or analysis (`[analysis.NAME]`) of the study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    /// `None` for an evaluation; the analysis kind (`bn-swap`, ...) for an analysis.
    pub kind: Option<String>,
    /// The command-line flags of the table, in key order (`--attack pgd --eps 0.1 ...`).
    pub flags: Vec<String>,
    pub routes: Routes,
    /// Cell-name patterns (`*` wildcards) this job applies to; empty = every cell.
    pub cells: Vec<String>,
    /// Study seeds whose runs this job applies to (`run-seeds`); empty = every seed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_seeds: Vec<u64>,
}

/// What one step of a run does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StepKind {
    Train,
    Eval {
        eval: String,
        /// The route tag of the output name (`clean`, `adv`, `ns-clean-ap-adv`), when the
        /// evaluation runs per route.
        route: Option<String>,
    },
    Analysis {
        analysis: String,
        analysis_kind: String,
        route: Option<String>,
    },
}

/// One command of a run: its arguments after `advtrain --threads T`, the file whose existence
/// means it is done, and its log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    #[serde(flatten)]
    pub kind: StepKind,
    /// Short label for progress and errors (`train`, `eval pgd20 adv`).
    pub label: String,
    pub args: Vec<String>,
    pub output: PathBuf,
    pub log: PathBuf,
}

/// One run: a cell at one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub cell: String,
    pub seed: u64,
    pub dir: PathBuf,
    pub recipe_file: PathBuf,
    /// The `--set` overrides of the cell (study `set`, variant, grid; the seed is `--seed`).
    pub overrides: Vec<String>,
    /// The resolved recipe the run trains with (compared with a finished run's `recipe.toml`).
    #[serde(skip)]
    pub recipe: Option<Recipe>,
    pub steps: Vec<Step>,
}

impl Run {
    /// `<cell>-seed<S>`.
    pub fn id(&self) -> String {
        format!("{}-seed{}", self.cell, self.seed)
    }
}

/// A resolved study: every run with its commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    pub study: String,
    pub file: PathBuf,
    pub out: PathBuf,
    pub seeds: Vec<u64>,
    /// Cell names in order.
    pub cells: Vec<String>,
    pub evals: Vec<Job>,
    pub analyses: Vec<Job>,
    pub report: ReportSpec,
    pub runs: Vec<Run>,
    /// Each cell's place in the `grid` (empty without a grid; absent in studies stored by
    /// older versions): what the report's grid figures plot along.
    #[serde(default)]
    pub grid: Vec<CellPoint>,
}

/// A cell's grid point: `base` is the cell without its grid suffix (`<recipe>[-<variant>]`),
/// `point` the value of every grid key (dotted key -> value, in the file's order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellPoint {
    pub cell: String,
    pub base: String,
    pub point: Vec<(String, serde_json::Value)>,
}

/// Name of the resolved study stored in its output folder.
pub const STUDY_JSON: &str = "study.json";

/// Route tag used in output names: the domain when NS and AP agree (`clean`, `adv`), else
/// `ns-clean-ap-adv`.
pub fn route_tag(r: Route) -> String {
    if r.ns == r.ap {
        domain_name(r.ns)
    } else {
        format!("ns-{}-ap-{}", domain_name(r.ns), domain_name(r.ap))
    }
}

/// The distinct routes of a recipe's model: those its objective names and the validation route,
/// two routes being the same when they differ only in a set the model shares (a single-BN model
/// has one route, `clean`); each kept as first named (Dual-AP's `adv` stays `adv`), clean first.
pub fn all_branches(recipe: &Recipe) -> Vec<Route> {
    let key = branch_key(recipe);
    let mut out: Vec<Route> = vec![];
    let named = recipe.train.objective.routes().into_iter().map(|(_, r)| r);
    for r in named.chain([recipe.validation_route()]) {
        if !out.iter().any(|o| key(*o) == key(r)) {
            out.push(r);
        }
    }
    // A route equivalent to clean is written clean, and comes first.
    for r in out.iter_mut() {
        if key(*r) == (0, 0) {
            *r = Route::domain(0);
        }
    }
    out.sort_by_key(|r| (*r != Route::domain(0)) as u8);
    out
}

/// The branch of [`all_branches`] that is the recipe's validation route (its robust branch).
pub fn robust_branch(recipe: &Recipe) -> Route {
    let (key, v) = (branch_key(recipe), recipe.validation_route());
    let found = all_branches(recipe).into_iter().find(|r| key(*r) == key(v));
    found.expect("all_branches holds the validation route")
}

/// `(ns, ap)` of a route with the indices the model does not distinguish (one statistics or
/// affine set) set to 0: routes with equal keys are the same branch.
fn branch_key(recipe: &Recipe) -> impl Fn(Route) -> (Domain, Domain) {
    let m = &recipe.model;
    let (ns_sets, ap_sets) = (m.norm.ns_domains, m.norm.ap_domains.max(m.heads));
    move |r: Route| {
        (
            if ns_sets <= 1 { 0 } else { r.ns },
            if ap_sets <= 1 { 0 } else { r.ap },
        )
    }
}

/// `*` wildcard match of a whole name.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// `[A-Za-z0-9._-]` kept, anything else `_`.
fn sanitise(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A table's entries with nested tables flattened into dotted keys (`{ train.epochs = 1 }` and
/// `{ "train.epochs" = 1 }` are the same).
fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            v => out.push((key, v.clone())),
        }
    }
}

/// `key=value` with the value in TOML syntax (what `train --set` parses).
fn assignment(key: &str, v: &toml::Value) -> String {
    format!("{key}={v}")
}

/// A value as the text of a cell-name suffix.
fn suffix_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => a.iter().map(suffix_value).collect::<Vec<_>>().join("_"),
        v => v.to_string(),
    }
}

/// A flag value on the command line: strings bare, arrays comma-joined.
fn flag_value(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Array(a) => a
            .iter()
            .map(flag_value)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
    }
}

/// The subcommand at `path` (`["eval"]`, `["analyze", "bn-swap"]`) of the root command.
fn subcommand<'a>(root: &'a clap::Command, path: &[&str]) -> Option<&'a clap::Command> {
    let mut cmd = root;
    for p in path {
        cmd = cmd.find_subcommand(p)?;
    }
    Some(cmd)
}

/// Flags a study sets itself (or that belong to the lane), refused in a table.
const RESERVED_FLAGS: &[(&str, &str)] = &[
    ("run", "the study evaluates each of its runs"),
    ("checkpoint", "the study evaluates each of its runs"),
    ("json", "the output is <run>/eval/<name>[-<route>].json"),
    ("out", "the output is <run>/analysis/<name>[-<route>]"),
    (
        "threads",
        "threads are set per lane by `study run --threads-per-job`",
    ),
    ("help", "not a setting"),
    ("version", "not a setting"),
];

/// The flags of one table (`[eval.NAME]` / `[analysis.NAME]`), checked against the clap
/// definition of the command at `path`; `where_` names the table for errors.
fn table_flags(
    root: &clap::Command,
    path: &[&str],
    table: &toml::Table,
    skip: &[&str],
    where_: &str,
) -> Result<Vec<String>> {
    let cmd = subcommand(root, path)
        .with_context(|| format!("{where_}: no command `advtrain {}`", path.join(" ")))?;
    let mut flags = vec![];
    for (key, value) in table {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let long = key.replace('_', "-");
        if let Some((_, why)) = RESERVED_FLAGS.iter().find(|(k, _)| *k == long) {
            bail!("{where_}: key `{key}` cannot be set here: {why}");
        }
        let arg = cmd
            .get_arguments()
            .chain(root.get_arguments())
            .find(|a| a.get_long() == Some(long.as_str()));
        let Some(arg) = arg else {
            let mut known: Vec<String> = cmd
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !RESERVED_FLAGS.iter().any(|(k, _)| k == l))
                .map(str::to_string)
                .collect();
            known.sort();
            bail!(
                "{where_}: unknown key `{key}`: `advtrain {}` has no flag --{long} (its flags: {})",
                path.join(" "),
                known.join(", ")
            );
        };
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        match (value, is_switch) {
            (toml::Value::Boolean(true), true) => flags.push(format!("--{long}")),
            (toml::Value::Boolean(false), true) => {}
            (_, true) => bail!("{where_}: key `{key}` is a switch: write `{key} = true`"),
            (v, false) => {
                let text = flag_value(v).with_context(|| {
                    format!("{where_}: key `{key}`: expected a number, a string or a list, got {v}")
                })?;
                flags.push(format!("--{long}"));
                flags.push(text);
            }
        }
    }
    Ok(flags)
}

/// Check a whole command line against the clap definition (values included).
fn check_command(root: &clap::Command, args: &[String], where_: &str) -> Result<()> {
    let argv = std::iter::once("advtrain".to_string()).chain(args.iter().cloned());
    match root.clone().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim_start_matches("error: ");
            bail!("{where_}: {first} (command: advtrain {})", args.join(" "))
        }
    }
}

fn parse_routes(t: &toml::Table, where_: &str) -> Result<(Routes, Vec<String>)> {
    let routes = match t.get("routes") {
        None => Routes::Fixed,
        Some(toml::Value::String(s)) if s == "all-branches" => Routes::AllBranches,
        Some(toml::Value::String(s)) if s == "robust-branch" => Routes::RobustBranch,
        Some(toml::Value::Array(a)) => {
            let mut v = vec![];
            for r in a {
                let s = r.as_str().with_context(|| {
                    format!("{where_}: key `routes`: expected route strings, got {r}")
                })?;
                s.parse::<Route>()
                    .map_err(|e| anyhow::anyhow!("{where_}: key `routes`: `{s}`: {e}"))?;
                v.push(s.to_string());
            }
            anyhow::ensure!(!v.is_empty(), "{where_}: key `routes` is an empty list");
            Routes::List(v)
        }
        Some(v) => {
            bail!("{where_}: key `routes`: expected \"all-branches\", \"robust-branch\" or a list of routes, got {v}")
        }
    };
    anyhow::ensure!(
        routes == Routes::Fixed || !t.contains_key("route"),
        "{where_}: give either `route` or `routes`, not both"
    );
    let cells = match t.get("cells") {
        None => vec![],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|c| {
                c.as_str().map(str::to_string).with_context(|| {
                    format!("{where_}: key `cells`: expected cell-name patterns, got {c}")
                })
            })
            .collect::<Result<_>>()?,
        Some(v) => bail!("{where_}: key `cells`: expected a list of cell-name patterns, got {v}"),
    };
    Ok((routes, cells))
}

/// `run-seeds = [0]`: the study seeds whose runs a job applies to (empty = all).
fn parse_run_seeds(t: &toml::Table, where_: &str) -> Result<Vec<u64>> {
    let v = match (t.get("run-seeds"), t.get("run_seeds")) {
        (Some(_), Some(_)) => bail!("{where_}: give `run-seeds` once"),
        (Some(v), None) | (None, Some(v)) => v,
        (None, None) => return Ok(vec![]),
    };
    let a = v.as_array().with_context(|| {
        format!("{where_}: key `run-seeds`: expected a list of study seeds, got {v}")
    })?;
    anyhow::ensure!(!a.is_empty(), "{where_}: key `run-seeds` is an empty list");
    a.iter()
        .map(|x| {
            x.as_integer()
                .filter(|i| *i >= 0)
                .map(|i| i as u64)
                .with_context(|| format!("{where_}: key `run-seeds`: expected seeds >= 0, got {x}"))
        })
        .collect()
}

fn check_name(name: &str, what: &str) -> Result<()> {
    anyhow::ensure!(
        !name.is_empty() && sanitise(name) == name,
        "{what} `{name}`: names may hold only letters, digits, '.', '_' and '-'"
    );
    Ok(())
}

impl Study {
    /// Read and resolve a study file. `cli` is the root command (`advtrain`), whose `eval` and
    /// `analyze` subcommands define the keys of the evaluation and analysis tables; `out`
    /// replaces the file's output folder.
    pub fn load(path: &Path, cli: &clap::Command, out: Option<&Path>) -> Result<Study> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read study file {}", path.display()))?;
        let file: StudyFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("study file {}: {e}", path.display()))?;
        let f = |what: String| format!("study file {}: {what}", path.display());
        let name = match &file.name {
            Some(n) => n.clone(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        check_name(&name, &f("study name".into()))?;
        let out = out
            .map(Path::to_path_buf)
            .or(file.out.clone())
            .unwrap_or_else(|| PathBuf::from("runs").join(&name));
        anyhow::ensure!(!file.seeds.is_empty(), f("`seeds` is empty".into()));
        let mut seen_seed = std::collections::BTreeSet::new();
        for s in &file.seeds {
            anyhow::ensure!(seen_seed.insert(*s), f(format!("seed {s} is listed twice")));
        }

        // Recipes: paths or globs, in order, each once.
        anyhow::ensure!(!file.recipes.is_empty(), f("`recipes` is empty".into()));
        let mut recipes: Vec<PathBuf> = vec![];
        for pattern in &file.recipes {
            let found: Vec<PathBuf> = if pattern.contains(['*', '?', '[']) {
                let mut v: Vec<PathBuf> = glob::glob(pattern)
                    .map_err(|e| anyhow::anyhow!(f(format!("recipes: `{pattern}`: {e}"))))?
                    .filter_map(|p| p.ok())
                    .filter(|p| p.is_file())
                    .collect();
                v.sort();
                v
            } else {
                vec![PathBuf::from(pattern)]
            };
            anyhow::ensure!(
                !found.is_empty(),
                f(format!("recipes: `{pattern}` matches no file"))
            );
            for p in found {
                anyhow::ensure!(
                    p.is_file(),
                    f(format!("recipes: {} does not exist", p.display()))
                );
                if !recipes.contains(&p) {
                    recipes.push(p);
                }
            }
        }

        // Overrides: set, variants, grid.
        let mut set = vec![];
        flatten("", &file.set, &mut set);
        let mut variants: Vec<(String, Vec<(String, toml::Value)>)> = vec![];
        for (vname, v) in &file.variants {
            check_name(vname, &f("variant".into()))?;
            let t = v.as_table().with_context(|| {
                f(format!(
                    "variants.{vname}: expected a table of overrides, got {v}"
                ))
            })?;
            let mut o = vec![];
            flatten("", t, &mut o);
            variants.push((vname.clone(), o));
        }
        // In the order of the file (TOML tables are read sorted by name).
        variants.sort_by_key(|(n, _)| {
            [format!("[variants.{n}]"), format!("[variants.\"{n}\"]")]
                .iter()
                .filter_map(|h| text.find(h.as_str()))
                .min()
                .unwrap_or(usize::MAX)
        });
        let mut grid = vec![];
        flatten("", &file.grid, &mut grid);
        let mut axes: Vec<(String, Vec<toml::Value>)> = vec![];
        for (k, v) in grid {
            let list = match v {
                toml::Value::Array(a) if !a.is_empty() => a,
                v => bail!(f(format!(
                    "grid key `{k}`: expected a non-empty list of values, got {v}"
                ))),
            };
            axes.push((k, list));
        }
        let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
        let short_unique = axes
            .iter()
            .map(|(k, _)| last(k))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == axes.len();
        // The product of the grid axes, as (suffix, overrides).
        let mut points: Vec<(Vec<String>, Vec<(String, toml::Value)>)> = vec![(vec![], vec![])];
        for (k, values) in &axes {
            let label = if short_unique {
                last(k)
            } else {
                k.replace('.', "_")
            };
            let mut next = vec![];
            for (suffix, o) in &points {
                for v in values {
                    let mut s = suffix.clone();
                    let text = suffix_value(v);
                    let sep = if matches!(v, toml::Value::Integer(_) | toml::Value::Float(_)) {
                        ""
                    } else {
                        "-"
                    };
                    s.push(sanitise(&format!("{label}{sep}{text}")));
                    let mut o = o.clone();
                    o.push((k.clone(), v.clone()));
                    next.push((s, o));
                }
            }
            points = next;
        }

        // Cells.
        struct CellDef {
            name: String,
            recipe: PathBuf,
            overrides: Vec<(String, toml::Value)>,
            base: String,
            point: Vec<(String, toml::Value)>,
        }
        let mut cells: Vec<CellDef> = vec![];
        let variant_list: Vec<(Option<String>, Vec<(String, toml::Value)>)> = if variants.is_empty()
        {
            vec![(None, vec![])]
        } else {
            variants
                .iter()
                .map(|(n, o)| (Some(n.clone()), o.clone()))
                .collect()
        };
        for r in &recipes {
            let stem = sanitise(&r.file_stem().unwrap_or_default().to_string_lossy());
            for (vname, vo) in &variant_list {
                for (suffix, go) in &points {
                    let mut parts = vec![stem.clone()];
                    parts.extend(vname.clone());
                    let base = parts.join("-");
                    parts.extend(suffix.iter().cloned());
                    let name = parts.join("-");
                    if let Some(c) = cells.iter().find(|c| c.name == name) {
                        bail!(f(format!(
                            "two cells are named `{name}` ({} and {}): recipes need distinct file names",
                            c.recipe.display(),
                            r.display()
                        )));
                    }
                    let overrides = set.iter().chain(vo).chain(go).cloned().collect();
                    cells.push(CellDef {
                        name,
                        recipe: r.clone(),
                        overrides,
                        base,
                        point: go.clone(),
                    });
                }
            }
        }

        // Every override key must be one a recipe uses: load each cell's recipe with them.
        let mut runs = vec![];
        let mut evals = jobs(cli, &file.eval, false, &f("".into()))?;
        let mut analyses = jobs(cli, &file.analysis, true, &f("".into()))?;
        // In the order of the file (TOML tables are read sorted by name).
        let at = |section: &str, name: &str| {
            [
                format!("[{section}.{name}]"),
                format!("[{section}.\"{name}\"]"),
            ]
            .iter()
            .filter_map(|h| text.find(h.as_str()))
            .min()
            .unwrap_or(usize::MAX)
        };
        evals.sort_by_key(|j| at("eval", &j.name));
        analyses.sort_by_key(|j| at("analysis", &j.name));
        for job in evals.iter().chain(&analyses) {
            let section = if job.kind.is_some() {
                "analysis"
            } else {
                "eval"
            };
            for s in &job.run_seeds {
                anyhow::ensure!(
                    file.seeds.contains(s),
                    f(format!(
                        "[{section}.{}]: key `run-seeds`: seed {s} is not one of the study's seeds {:?}",
                        job.name, file.seeds
                    ))
                );
            }
            for p in &job.cells {
                anyhow::ensure!(
                    cells.iter().any(|c| wildcard(p, &c.name)),
                    f(format!(
                        "[{}.{}]: key `cells`: pattern `{p}` matches no cell (cells: {})",
                        if job.kind.is_some() {
                            "analysis"
                        } else {
                            "eval"
                        },
                        job.name,
                        cells
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                );
            }
        }
        for c in &cells {
            let sets: Vec<String> = c.overrides.iter().map(|(k, v)| assignment(k, v)).collect();
            for seed in &file.seeds {
                let mut all = sets.clone();
                all.push(format!("seed={seed}"));
                let (recipe, ignored) =
                    Recipe::load_noting(&c.recipe, &all).with_context(|| {
                        f(format!(
                            "cell `{}` (recipe {} with {})",
                            c.name,
                            c.recipe.display(),
                            if sets.is_empty() {
                                "no overrides".into()
                            } else {
                                sets.join(" ")
                            }
                        ))
                    })?;
                for (k, _) in &c.overrides {
                    let field = k.strip_prefix("train.").unwrap_or(k);
                    let top = field.split('.').next().unwrap_or(field);
                    if let Some(msg) = ignored.iter().find(|m| {
                        m.contains(&format!("train.{top} "))
                            || m.contains(&format!("[train.{top}]"))
                    }) {
                        bail!(f(format!(
                            "override `{k}` of cell `{}`: recipe {}: {msg}",
                            c.name,
                            c.recipe.display()
                        )));
                    }
                }
                let dir = out.join(format!("{}-seed{seed}", c.name));
                let mut run = Run {
                    cell: c.name.clone(),
                    seed: *seed,
                    dir: dir.clone(),
                    recipe_file: c.recipe.clone(),
                    overrides: sets.clone(),
                    recipe: Some(recipe.clone()),
                    steps: vec![],
                };
                run.steps = steps(cli, &run, &recipe, &out, &evals, &analyses, &f)?;
                runs.push(run);
            }
        }
        Ok(Study {
            study: name,
            file: path.to_path_buf(),
            out,
            seeds: file.seeds.clone(),
            cells: cells.iter().map(|c| c.name.clone()).collect(),
            evals,
            analyses,
            report: file.report.clone(),
            runs,
            grid: if axes.is_empty() {
                vec![]
            } else {
                cells
                    .iter()
                    .map(|c| CellPoint {
                        cell: c.name.clone(),
                        base: c.base.clone(),
                        point: c
                            .point
                            .iter()
                            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
                            .collect(),
                    })
                    .collect()
            },
        })
    }

    /// Every step of every run, with its run.
    pub fn steps(&self) -> impl Iterator<Item = (&Run, &Step)> {
        self.runs
            .iter()
            .flat_map(|r| r.steps.iter().map(move |s| (r, s)))
    }
}

/// The `[eval.*]` or `[analysis.*]` tables as jobs (flags checked against the command).
fn jobs(cli: &clap::Command, tables: &toml::Table, analysis: bool, file: &str) -> Result<Vec<Job>> {
    let mut out = vec![];
    for (name, v) in tables {
        let section = if analysis { "analysis" } else { "eval" };
        let where_ = format!("{file}[{section}.{name}]");
        check_name(name, &where_)?;
        let t = v
            .as_table()
            .with_context(|| format!("{where_}: expected a table of flags, got {v}"))?;
        let (routes, cells) = parse_routes(t, &where_)?;
        let run_seeds = parse_run_seeds(t, &where_)?;
        let (kind, path) = if analysis {
            let kind = t
                .get("kind")
                .and_then(|k| k.as_str())
                .with_context(|| {
                    format!("{where_}: key `kind` (the analysis: domain-gap, bn-divergence, bn-swap, grad-conflict) is missing")
                })?
                .to_string();
            anyhow::ensure!(
                subcommand(cli, &["analyze", &kind]).is_some(),
                "{where_}: key `kind`: unknown analysis `{kind}`"
            );
            (Some(kind.clone()), vec!["analyze".to_string(), kind])
        } else {
            (None, vec!["eval".to_string()])
        };
        let path_ref: Vec<&str> = path.iter().map(String::as_str).collect();
        let flags = table_flags(
            cli,
            &path_ref,
            t,
            &["routes", "cells", "kind", "run-seeds", "run_seeds"],
            &where_,
        )?;
        if routes != Routes::Fixed {
            let cmd = subcommand(cli, &path_ref).expect("checked");
            anyhow::ensure!(
                cmd.get_arguments().any(|a| a.get_long() == Some("route")),
                "{where_}: key `routes`: `advtrain {}` has no --route",
                path.join(" ")
            );
        }
        out.push(Job {
            name: name.clone(),
            kind,
            flags,
            routes,
            cells,
            run_seeds,
        });
    }
    Ok(out)
}

/// The commands of one run: train, then each evaluation and analysis that applies to its cell,
/// per route.
fn steps(
    cli: &clap::Command,
    run: &Run,
    recipe: &Recipe,
    out: &Path,
    evals: &[Job],
    analyses: &[Job],
    f: &dyn Fn(String) -> String,
) -> Result<Vec<Step>> {
    let dir = &run.dir;
    let logs = out.join("logs").join(run.id());
    let d = dir.display().to_string();
    let mut train = vec![
        "train".to_string(),
        "--recipe".into(),
        run.recipe_file.display().to_string(),
        "--out".into(),
        d.clone(),
        "--resume".into(),
    ];
    for s in &run.overrides {
        train.push("--set".into());
        train.push(s.clone());
    }
    train.extend(["--seed".into(), run.seed.to_string()]);
    let mut steps = vec![Step {
        kind: StepKind::Train,
        label: "train".into(),
        args: train,
        output: dir.join("summary.json"),
        log: logs.join("train.log"),
    }];
    for job in evals.iter().chain(analyses) {
        if !job.cells.is_empty() && !job.cells.iter().any(|p| wildcard(p, &run.cell)) {
            continue;
        }
        if !job.run_seeds.is_empty() && !job.run_seeds.contains(&run.seed) {
            continue;
        }
        // A model's branches as route strings (`clean`, `adv`, `ns=clean,ap=adv`).
        let named = |rs: Vec<Route>| -> Vec<Option<String>> {
            let name = |r: Route| match r.ns == r.ap {
                true => domain_name(r.ns),
                false => r.to_string(),
            };
            rs.into_iter().map(|r| Some(name(r))).collect()
        };
        let routes: Vec<Option<String>> = match &job.routes {
            Routes::Fixed => vec![None],
            Routes::AllBranches => named(all_branches(recipe)),
            Routes::RobustBranch => named(vec![robust_branch(recipe)]),
            Routes::List(v) => v.iter().cloned().map(Some).collect(),
        };
        for route in routes {
            let tag = route
                .as_ref()
                .map(|r| route_tag(r.parse().expect("checked when read")));
            let stem = match &tag {
                Some(t) => format!("{}-{t}", job.name),
                None => job.name.clone(),
            };
            let (kind, mut args, output, label) = match &job.kind {
                None => {
                    let json = dir.join("eval").join(format!("{stem}.json"));
                    let args = vec![
                        "eval".to_string(),
                        "--run".into(),
                        d.clone(),
                        "--json".into(),
                        json.display().to_string(),
                    ];
                    let kind = StepKind::Eval {
                        eval: job.name.clone(),
                        route: tag.clone(),
                    };
                    (kind, args, json, format!("eval {stem}"))
                }
                Some(k) => {
                    let folder = dir.join("analysis").join(&stem);
                    let args = vec![
                        "analyze".to_string(),
                        k.clone(),
                        "--run".into(),
                        d.clone(),
                        "--out".into(),
                        folder.display().to_string(),
                    ];
                    let kind = StepKind::Analysis {
                        analysis: job.name.clone(),
                        analysis_kind: k.clone(),
                        route: tag.clone(),
                    };
                    (
                        kind,
                        args,
                        folder.join(format!("{k}.json")),
                        format!("analysis {stem}"),
                    )
                }
            };
            args.extend(job.flags.iter().cloned());
            if let Some(r) = &route {
                args.extend(["--route".into(), r.clone()]);
            }
            let section = if job.kind.is_some() {
                "analysis"
            } else {
                "eval"
            };
            check_command(cli, &args, &f(format!("[{section}.{}]", job.name)))?;
            steps.push(Step {
                kind,
                label,
                args,
                output,
                log: logs.join(format!("{stem}.log")),
            });
        }
    }
    Ok(steps)
}

/// Which cells have which routes per evaluation (for reports): eval name -> route tags.
pub fn eval_routes(study: &Study) -> BTreeMap<String, Vec<Option<String>>> {
    let mut m: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for (_, s) in study.steps() {
        if let StepKind::Eval { eval, route } = &s.kind {
            let v = m.entry(eval.clone()).or_default();
            if !v.contains(route) {
                v.push(route.clone());
            }
        }
    }
    m
}
