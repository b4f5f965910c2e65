//! The analyze output contract: the files `advtrain analyze <kind>` writes keep every field of
//! the stored examples in `tests/data/analysis_contract/` (recorded from the code before the
//! analyses became library plans, issue 14), in the same order, with the same types, the same
//! strings and the same numbers (to 1e-4 relative: on other CPUs (AVX2 vs AVX-512 kernels) the
//! tiny model the test trains comes out slightly different, and so does its checkpoint hash). Fields may
//! be added, never renamed, dropped or moved. Only `elapsed_s` and the temporary folder in
//! paths are not compared.
//!
//! Where every number of a case equals the stored one bit for bit (the recording machine), its
//! printed table (stdout), its messages (stderr) and its PNG must be byte-identical to the stored ones too.
//!
//! Re-record (only when a field is added on purpose): `ADVTRAIN_RECORD_CONTRACT=1 cargo test
//! --release --test it analysis_contract::`.

use crate::common;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The analyses whose outputs are part of the contract: (case, kind, model, arguments).
/// `single` is the confident small-cnn, `dual` a Dual-BN small-cnn with distinct branches.
const CASES: &[(&str, &str, &str, &[&str])] = &[
    (
        "domain-gap",
        "domain-gap",
        "single",
        &["--eps", "0.1", "--n", "32"],
    ),
    (
        "domain-gap-dual-adv",
        "domain-gap",
        "dual",
        &[
            "--eps", "0.05", "--n", "16", "--route", "adv", "--seed", "3",
        ],
    ),
    ("bn-divergence", "bn-divergence", "dual", &[]),
    (
        "bn-swap",
        "bn-swap",
        "dual",
        &[
            "--eps",
            "0.1",
            "--n",
            "16",
            "--steps",
            "1",
            "--reestimate-batches",
            "1",
            "--reestimate-batch-size",
            "8",
        ],
    ),
    (
        "bn-swap-adv-reestimate",
        "bn-swap",
        "dual",
        &[
            "--eps",
            "0.1",
            "--n",
            "8",
            "--steps",
            "12",
            "--reestimate-on",
            "adv",
            "--reestimate-batches",
            "2",
            "--reestimate-batch-size",
            "4",
            "--reestimate-eps",
            "0.05",
            "--batch-size",
            "5",
            "--seed",
            "2",
        ],
    ),
    (
        "grad-conflict",
        "grad-conflict",
        "single",
        &["--terms", "clean-ce,adv-ce", "--eps", "0.1", "--n", "24"],
    ),
    (
        "grad-conflict-hooks",
        "grad-conflict",
        "single",
        &[
            "--terms",
            "adv-ce,dist-sg",
            "--eps",
            "0.1",
            "--n",
            "16",
            "--hooks",
            "bn3",
        ],
    ),
    (
        "grad-conflict-dual",
        "grad-conflict",
        "dual",
        &["--terms", "kl,kl-sg", "--eps", "0.1", "--n", "16"],
    ),
    (
        "grad-conflict-dual-stage",
        "grad-conflict",
        "dual",
        &[
            "--terms",
            "inv,arat-asym",
            "--eps",
            "0.1",
            "--n",
            "16",
            "--hooks",
            "1",
            "--route",
            "ns=adv,ap=clean",
        ],
    ),
];

fn contract_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/analysis_contract")
}

/// `text` with the temporary folder written as `<tmp>`.
fn untmp(text: &str, tmp: &Path) -> String {
    text.replace(&tmp.display().to_string(), "<tmp>")
}

/// The keys of every object of a pretty-printed JSON text, in order, with their nesting path
/// (serde_json's `Value` sorts keys, so the order is read from the text).
fn key_order(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let indent = l.len() - t.len();
            let rest = t.strip_prefix('"')?;
            let end = rest.find("\": ")?;
            Some(format!("{indent}:{}", &rest[..end]))
        })
        .collect()
}

/// Every field of `want` is in `got` with the same type; strings and booleans equal; numbers
/// within 1e-4 relative (`exact` is cleared when any number or hash differs at all).
fn contains(want: &Value, got: &Value, path: &str, errors: &mut Vec<String>, exact: &mut bool) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    None => errors.push(format!("{p}: missing")),
                    Some(_) if k == "elapsed_s" => {}
                    // The checkpoint is trained by the test: other CPUs' kernels give other
                    // bits, so its hash is held to its form (and exactly only in exact mode).
                    Some(gv) if k.ends_with("sha256") => match gv.as_str() {
                        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                            if Some(h) != wv.as_str() {
                                *exact = false;
                            }
                        }
                        _ => errors.push(format!("{p}: {gv}, expected a sha256 like {wv}")),
                    },
                    Some(gv) => contains(wv, gv, &p, errors, exact),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                errors.push(format!(
                    "{path}: {} elements, expected {}",
                    g.len(),
                    w.len()
                ));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                contains(wv, gv, &format!("{path}[{i}]"), errors, exact);
            }
        }
        (Value::Number(w), Value::Number(g)) => {
            let (w, g) = (w.as_f64().unwrap(), g.as_f64().unwrap());
            if w.to_bits() != g.to_bits() {
                *exact = false;
            }
            if (w - g).abs() > 1e-4 * (1.0 + w.abs()) {
                errors.push(format!("{path}: {g}, expected {w}"));
            }
        }
        (w, g) if std::mem::discriminant(w) != std::mem::discriminant(g) => {
            errors.push(format!("{path}: {g}, expected a value like {w}"))
        }
        (w, g) => {
            if w != g {
                errors.push(format!("{path}: {g}, expected {w}"));
            }
        }
    }
}

/// The stored key order is a prefix-preserving subsequence of the new one: every stored key
/// appears, in the same order (new keys may sit anywhere).
fn order_kept(want: &[String], got: &[String]) -> Result<(), String> {
    let mut it = got.iter();
    for k in want {
        if !it.any(|g| g == k) {
            return Err(format!("key {k} missing or out of order"));
        }
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn analyze_outputs_keep_every_field_of_the_stored_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    common::write_tiny_mnist(&data, 60, 40);
    {
        let _g = common::rng_lock();
        let single = common::confident_small_cnn();
        let dual = common::dual_bn_model();
        common::save_run(&root.join("single"), &data, &single);
        common::save_run(&root.join("dual"), &data, &dual);
    }
    let record = std::env::var("ADVTRAIN_RECORD_CONTRACT").is_ok();
    if record {
        std::fs::create_dir_all(contract_dir()).unwrap();
    }
    let mut errors = Vec::new();
    for (case, kind, model, args) in CASES {
        let out = root.join("out").join(case);
        let run = root.join(model).display().to_string();
        let out_s = out.display().to_string();
        let mut full = vec![*kind, "--run", &run, "--out", &out_s, "--device", "cpu"];
        full.extend_from_slice(args);
        let o = common::analyze(&full);
        assert!(o.status.success(), "{case}: {}", common::stderr(&o));
        let json = untmp(
            &std::fs::read_to_string(out.join(format!("{kind}.json"))).unwrap(),
            root,
        );
        let png = std::fs::read(out.join(format!("{kind}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{case}: not a PNG");
        let stdout = untmp(&String::from_utf8_lossy(&o.stdout), root);
        let stderr = untmp(&common::stderr(&o), root);
        let stored = |ext: &str| contract_dir().join(format!("{case}.{ext}"));
        if record {
            std::fs::write(stored("json"), &json).unwrap();
            std::fs::write(stored("stdout"), &stdout).unwrap();
            std::fs::write(stored("stderr"), &stderr).unwrap();
            std::fs::write(stored("png.sha256"), sha256_hex(&png) + "\n").unwrap();
            continue;
        }
        let want_text = std::fs::read_to_string(stored("json")).unwrap();
        let (want, got): (Value, Value) = (
            serde_json::from_str(&want_text).unwrap(),
            serde_json::from_str(&json).unwrap(),
        );
        let mut exact = true;
        contains(&want, &got, case, &mut errors, &mut exact);
        if let Err(e) = order_kept(&key_order(&want_text), &key_order(&json)) {
            errors.push(format!("{case}: {e}"));
        }
        if exact {
            let want_png = std::fs::read_to_string(stored("png.sha256")).unwrap();
            if sha256_hex(&png) != want_png.trim() {
                errors.push(format!("{case}: same numbers but a different PNG"));
            }
            if std::fs::read_to_string(stored("stdout")).unwrap() != stdout {
                errors.push(format!("{case}: same numbers but a different printout"));
            }
            if std::fs::read_to_string(stored("stderr")).unwrap() != stderr {
                errors.push(format!("{case}: same numbers but different messages"));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "analyze output contract broken:\n{}",
        errors.join("\n")
    );
}

/// The comparison can fail: a renamed field, a changed number, a changed type, a shorter
/// list and a moved field are all reported.
#[test]
fn the_contract_check_detects_renames_moves_and_changes() {
    let want_text = "{\n  \"a\": 1.0,\n  \"b\": {\n    \"c\": \"x\",\n    \"n\": [1, 2]\n  },\n  \"elapsed_s\": 3.0\n}";
    let want: Value = serde_json::from_str(want_text).unwrap();
    let (mut errors, mut exact) = (Vec::new(), true);
    let got =
        serde_json::json!({"a": 1.0, "b": {"c": "x", "n": [1, 2], "new": 1}, "elapsed_s": 9.0});
    contains(&want, &got, "", &mut errors, &mut exact);
    assert!(errors.is_empty() && exact, "{errors:?}");
    for bad in [
        serde_json::json!({"a": 1.0, "b": {"c2": "x", "n": [1, 2]}, "elapsed_s": 3.0}),
        serde_json::json!({"a": 0.9, "b": {"c": "x", "n": [1, 2]}, "elapsed_s": 3.0}),
        serde_json::json!({"a": "1", "b": {"c": "x", "n": [1, 2]}, "elapsed_s": 3.0}),
        serde_json::json!({"a": 1.0, "b": {"c": "x", "n": [1]}, "elapsed_s": 3.0}),
    ] {
        let mut errors = Vec::new();
        contains(&want, &bad, "", &mut errors, &mut exact);
        assert!(!errors.is_empty(), "{bad} passed");
    }
    let (mut errors, mut exact) = (Vec::new(), true);
    let tiny =
        serde_json::json!({"a": 1.0 + 1e-12, "b": {"c": "x", "n": [1, 2]}, "elapsed_s": 3.0});
    contains(&want, &tiny, "", &mut errors, &mut exact);
    assert!(
        errors.is_empty() && !exact,
        "a rounding difference is tolerated but not exact"
    );
    let keys = key_order(want_text);
    assert_eq!(keys, ["2:a", "2:b", "4:c", "4:n", "2:elapsed_s"]);
    let added = key_order("{\n  \"a\": 1,\n  \"z\": 2,\n  \"b\": {\n    \"c\": 1,\n    \"n\": 1\n  },\n  \"elapsed_s\": 1\n}");
    assert!(order_kept(&keys, &added).is_ok());
    let moved = key_order(
        "{\n  \"b\": {\n    \"c\": 1,\n    \"n\": 1\n  },\n  \"a\": 1,\n  \"elapsed_s\": 1\n}",
    );
    assert!(order_kept(&keys, &moved).is_err());
}
