//! advtrain's integration tests: one crate, so one test binary links libtorch once. Each module
//! is one area (the former `tests/<name>.rs`); `scripts/test --test it <module>::` runs one,
//! e.g. `scripts/test --test it attack_apgd::`. The shared builders (tiny data, recipes,
//! models, checkpoints, the CLI runner) are in `tests/common`.
//!
//! Every test runs as a thread of this one process, so process-wide state is shared across
//! modules, and the tests keep to these rules:
//! - torch's CPU random generator is one per process. A test whose result depends on the
//!   numbers drawn after a `tch::manual_seed` (directly, or inside the library: `Network::new`,
//!   training, seeded attacks, evaluation, analyses) holds [`common::rng_lock`] while it seeds and
//!   draws; every other test that draws (builds or loads a network, `Tensor::rand`) holds
//!   [`common::rng_shared`], so no draw lands inside another test's seeded section.
//! - No test changes the process's torch threads (`tch::set_num_threads`), environment
//!   variables, current directory or signal handlers: such settings go to a child process
//!   (`common::advtrain_cmd`), and the panic hook `fuzz_readers` installs keeps the default
//!   report for every panic it did not catch itself.
//! - `distributed` runs this binary again as its workers, each on one `#[ignore]`d test
//!   selected by its full name (`distributed::worker_*`).

#[path = "../common/mod.rs"]
mod common;

mod analysis;
mod analysis_contract;
mod attack_apgd;
mod attack_fab;
mod attack_square;
mod attacks;
mod autoattack;
mod autocast_region;
mod bad_input;
mod bench;
mod bn_segments;
mod cli;
mod compute;
mod distributed;
mod eval_contract;
mod fuzz_readers;
mod grad_conflict;
mod layers;
mod loader_device;
mod metrics;
mod mixacm;
mod models;
mod multi_domain;
mod norm_reference;
mod norm_variants;
mod objectives;
mod own_models;
mod plot;
mod recipes;
mod registry;
mod reliability;
mod sgd_foreach;
mod square_check_every;
mod studies;
mod swa;
mod train_resume;

/// Every integration-test file is a module of this crate: a `tests/*.rs` file would be one more
/// binary linking libtorch (and outside these rules), and a `tests/it/*.rs` file not declared
/// above would never run.
#[test]
fn every_test_file_is_a_module_of_this_crate() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let stems = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension()? == "rs").then(|| p.file_stem().unwrap().to_string_lossy().into())
            })
            .collect();
        v.sort();
        v
    };
    let top = stems(&tests);
    assert!(
        top.is_empty(),
        "tests/{{{}}}.rs: make each a module of tests/it (declared in tests/it/main.rs)",
        top.join(",")
    );
    let main = std::fs::read_to_string(tests.join("it/main.rs")).unwrap();
    for m in stems(&tests.join("it")) {
        assert!(
            m == "main" || main.contains(&format!("\nmod {m};\n")),
            "tests/it/{m}.rs is not declared in tests/it/main.rs: its tests never run"
        );
    }
}
