//! Property tests ("fuzzing") of every reader that takes a user file: IDX images and labels (raw
//! and gzip), the IDX and CIFAR folders, recipe TOML (`Recipe::load`) and the AutoAttack state
//! JSON (`read_state`). Valid files are mutated (truncated at random lengths, random bytes
//! flipped, header fields such as IDX dims / magic / counts rewritten, CIFAR records cut or
//! extended, TOML values, keys and tables replaced, JSON fields replaced or removed), with every
//! case seeded from one ChaCha8 stream. Each read must return either `Ok` with a result that is
//! consistent (sizes agree with the shape, labels in range, a recipe that validates and
//! round-trips, a state whose indices and records fit the evaluation) or an `Err` whose message
//! names the file; a panic is caught and reported with the case's seed, and no header may make a
//! reader allocate more than the file holds (an IDX header claiming 2^32 images must not abort).
//! The checkpoint reader is not fuzzed here.

use crate::common;

use advtrain::data::{cifar, idx, DataSpec};
use advtrain::eval::autoattack::{read_state, AttackRecord, InProgress, Preset, State, StateKey};
use advtrain::train::Recipe;
use flate2::{write::GzEncoder, Compression};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Collected failures of one test (listed together at the end).
#[derive(Default)]
struct Failures(Vec<String>, usize, usize);

impl Failures {
    fn add(&mut self, what: &str, seed: u64, msg: String) {
        self.0.push(format!("{what} (case seed {seed}): {msg}"));
    }

    /// Counts one case: `Ok(true)` = accepted consistently, `Ok(false)` = refused with an
    /// error naming the file, `Err` = a failure (a panic, an inconsistent `Ok`, a vague error).
    fn record(&mut self, what: &str, seed: u64, outcome: Result<bool, String>) {
        match outcome {
            Ok(true) => self.1 += 1,
            Ok(false) => self.2 += 1,
            Err(m) => self.add(what, seed, m),
        }
    }

    /// No failure, and the mutations produced both accepted and refused files.
    fn assert_none(self, cases: usize) {
        eprintln!(
            "{cases} cases: {} Ok, {} Err, {} failures",
            self.1,
            self.2,
            self.0.len()
        );
        assert!(
            self.1 > 0 && self.2 > 0,
            "the mutations should give both accepted and refused files"
        );
        assert!(
            self.0.is_empty(),
            "{} of {cases} cases failed; first ones:\n{}",
            self.0.len(),
            self.0
                .iter()
                .take(25)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

thread_local! {
    /// Whether this thread runs a [`guarded`] call (its panics get the short report).
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f()` with a panic turned into `Err("panicked: ...")`.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let before = GUARDED.with(|g| g.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(before));
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "<non-string panic>".into());
        format!("panicked: {msg}")
    })
}

/// The panic hook prints every caught panic; keep the output of those [`guarded`] catches
/// short. The hook is the process's (every test of the crate): installed once, it gives every
/// other panic the report of the hook it replaced.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) {
                eprintln!("caught panic: {info}");
            } else {
                before(info)
            }
        }));
    });
}

/// The per-case RNG: case `i` of the stream named `what`.
fn case_rng(what: &str, i: u64) -> (u64, ChaCha8Rng) {
    let tag = what.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let seed = tag ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (seed, ChaCha8Rng::seed_from_u64(seed))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Values that break size arithmetic when written into a u32 header field.
fn interesting_u32(rng: &mut ChaCha8Rng, near: u32) -> u32 {
    *[
        0,
        1,
        2,
        near.wrapping_sub(1),
        near.wrapping_add(1),
        near.wrapping_mul(2),
        14,
        28,
        0x7fff_ffff,
        0x8000_0000,
        u32::MAX,
        u32::MAX - 1,
        0x0000_0801,
        0x0000_0803,
        0x0000_0804,
        0x0800_0803,
        rng.gen(),
    ]
    .choose(rng)
    .unwrap()
}

/// Generic byte mutations: truncation, flips, appended / inserted / deleted bytes.
fn mutate_bytes(rng: &mut ChaCha8Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    match rng.gen_range(0..6) {
        0 => {
            let cut = rng.gen_range(0..=b.len());
            b.truncate(cut);
        }
        1 => {
            for _ in 0..rng.gen_range(1..=4) {
                if b.is_empty() {
                    break;
                }
                let i = rng.gen_range(0..b.len());
                b[i] ^= rng.gen_range(1..=255u8);
            }
        }
        2 => {
            // Flip a byte of the header region (the first 16 bytes), where sizes live.
            if !b.is_empty() {
                let i = rng.gen_range(0..b.len().min(16));
                b[i] = *[0u8, 0xff, 0x80, 0x01].choose(rng).unwrap();
            }
        }
        3 => {
            let extra: Vec<u8> = (0..rng.gen_range(1..=64)).map(|_| rng.gen()).collect();
            b.extend(extra);
        }
        4 => {
            let at = rng.gen_range(0..=b.len());
            let extra: Vec<u8> = (0..rng.gen_range(1..=8)).map(|_| rng.gen()).collect();
            b.splice(at..at, extra);
        }
        _ => {
            if !b.is_empty() {
                let at = rng.gen_range(0..b.len());
                let len = rng.gen_range(1..=(b.len() - at).min(40));
                b.drain(at..at + len);
            }
        }
    }
    b
}

/// IDX file bytes: magic, dims, body.
fn idx_bytes(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

/// A mutated IDX file (uncompressed bytes): header fields rewritten, the dims reshaped with the
/// same product, or generic byte mutations.
fn mutate_idx(rng: &mut ChaCha8Rng, dims: &[u32], base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    match rng.gen_range(0..4) {
        0 => {
            // One header field (magic or a dimension) rewritten.
            let field = rng.gen_range(0..=dims.len());
            let near = if field == 0 { 0x803 } else { dims[field - 1] };
            let v = interesting_u32(rng, near);
            b[4 * field..4 * field + 4].copy_from_slice(&v.to_be_bytes());
        }
        1 if dims.len() == 3 => {
            // Same number of pixels, other image shape (e.g. 28x28 -> 14x56).
            let px = dims[1] * dims[2];
            let divisors: Vec<u32> = (1..=px).filter(|d| px % d == 0).collect();
            let r = *divisors.choose(rng).unwrap();
            b[8..12].copy_from_slice(&r.to_be_bytes());
            b[12..16].copy_from_slice(&(px / r).to_be_bytes());
        }
        2 => {
            // The count changed and the body cut or extended to match it (consistent files
            // of another size), or not.
            let n = rng.gen_range(0..=dims[0] + 2);
            b[4..8].copy_from_slice(&n.to_be_bytes());
            let per: usize = dims[1..].iter().map(|&d| d as usize).product();
            let want = 4 + 4 * dims.len() + n as usize * per;
            if rng.gen_bool(0.7) {
                b.resize(want, 7);
            }
        }
        _ => b = mutate_bytes(rng, &b),
    }
    b
}

const IDX_IMAGES: u32 = 0x803;
const IDX_LABELS: u32 = 0x801;

/// Checks one `read_idx_images` result against the file's own (decompressed) bytes.
fn check_idx_images(
    path: &Path,
    raw: &[u8],
    r: Result<(usize, usize, usize, Vec<u8>), advtrain::data::DataError>,
) -> Result<bool, String> {
    match r {
        Ok((n, h, w, px)) => {
            let header = [be_u32(raw, 4), be_u32(raw, 8), be_u32(raw, 12)];
            if header != [Some(n as u32), Some(h as u32), Some(w as u32)] {
                return Err(format!("Ok({n}x{h}x{w}) but the header says {header:?}"));
            }
            if be_u32(raw, 0) != Some(IDX_IMAGES) {
                return Err("Ok for a file with another magic".into());
            }
            if px.len() != n * h * w || raw.len() != 16 + px.len() {
                return Err(format!(
                    "Ok({n}x{h}x{w}) with {} pixel bytes from a {}-byte file",
                    px.len(),
                    raw.len()
                ));
            }
            if n > 0 && (h == 0 || w == 0) {
                return Err(format!("Ok with {n} images of {h}x{w}"));
            }
            Ok(true)
        }
        Err(e) => names(path, &e.to_string()),
    }
}

/// `Ok(false)` (a clean refusal) when `msg` names `path`, else the failure.
fn names(path: &Path, msg: &str) -> Result<bool, String> {
    if msg.contains(&path.display().to_string()) {
        Ok(false)
    } else {
        Err(format!("error does not name {}: {msg}", path.display()))
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn idx_files_never_panic_and_errors_name_the_file() {
    quiet_panics();
    let tmp = tempfile::tempdir().unwrap();
    let mut fails = Failures::default();
    let (n, h, w) = (3u32, 28u32, 28u32);
    let pixels: Vec<u8> = (0..n * h * w).map(|i| (i * 7 % 251) as u8).collect();
    let images = idx_bytes(IDX_IMAGES, &[n, h, w], &pixels);
    let labels = idx_bytes(IDX_LABELS, &[n], &[4, 0, 9]);
    let cases = 3000u64;
    for i in 0..cases {
        let (seed, mut rng) = case_rng("idx", i);
        // 0: raw images, 1: gzip of mutated images, 2: mutated gzip stream of valid images,
        // 3: raw labels, 4: gzip of mutated labels.
        let kind = rng.gen_range(0..5);
        let raw = match kind {
            0 | 1 => mutate_idx(&mut rng, &[n, h, w], &images),
            2 => images.clone(),
            _ => mutate_idx(&mut rng, &[n], &labels),
        };
        let bytes = match kind {
            1 | 4 => gzip(&raw),
            2 => mutate_bytes(&mut rng, &gzip(&raw)),
            _ => raw.clone(),
        };
        let path = tmp.path().join(format!("c{i}-kind{kind}"));
        write(&path, &bytes);
        let outcome = if kind >= 3 {
            guarded(|| idx::read_idx_labels(&path)).and_then(|r| match r {
                Ok(l) => {
                    let ok = be_u32(&raw, 0) == Some(IDX_LABELS)
                        && be_u32(&raw, 4) == Some(l.len() as u32)
                        && raw.len() == 8 + l.len();
                    ok.then_some(true)
                        .ok_or_else(|| "Ok labels that disagree with the file".to_string())
                }
                Err(e) => names(&path, &e.to_string()),
            })
        } else if kind == 2 {
            // The stream decides what the bytes are: only internal consistency can be checked.
            guarded(|| idx::read_idx_images(&path)).and_then(|r| match r {
                Ok((rn, rh, rw, px)) => (px.len() == rn * rh * rw)
                    .then_some(true)
                    .ok_or_else(|| "inconsistent Ok".to_string()),
                Err(e) => names(&path, &e.to_string()),
            })
        } else {
            guarded(|| idx::read_idx_images(&path)).and_then(|r| check_idx_images(&path, &raw, r))
        };
        fails.record(&format!("idx kind {kind}"), seed, outcome);
        std::fs::remove_file(&path).unwrap();
    }
    fails.assert_none(cases as usize);
}

/// A tiny MNIST-style folder: `t10k-*` images (3 of 28x28) and labels, optionally gzipped.
fn idx_dir(dir: &Path, images: &[u8], labels: &[u8], gz: bool) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let ext = if gz { ".gz" } else { "" };
    let ip = dir.join(format!("t10k-images-idx3-ubyte{ext}"));
    let lp = dir.join(format!("t10k-labels-idx1-ubyte{ext}"));
    let enc = |b: &[u8]| if gz { gzip(b) } else { b.to_vec() };
    write(&ip, &enc(images));
    write(&lp, &enc(labels));
    (ip, lp)
}

#[test]
fn idx_folders_load_consistently_or_name_the_file() {
    quiet_panics();
    let tmp = tempfile::tempdir().unwrap();
    let mut fails = Failures::default();
    let (n, h, w) = (3u32, 28u32, 28u32);
    let pixels: Vec<u8> = (0..n * h * w).map(|i| (i * 13 % 256) as u8).collect();
    let images = idx_bytes(IDX_IMAGES, &[n, h, w], &pixels);
    let labels = idx_bytes(IDX_LABELS, &[n], &[1, 2, 3]);
    let cases = 800u64;
    for i in 0..cases {
        let (seed, mut rng) = case_rng("idx-dir", i);
        let dir = tmp.path().join(format!("c{i}"));
        let gz = rng.gen_bool(0.3);
        let (mut im, mut lb) = (images.clone(), labels.clone());
        if rng.gen_bool(0.6) {
            im = mutate_idx(&mut rng, &[n, h, w], &im);
        } else {
            lb = mutate_idx(&mut rng, &[n], &lb);
            // Out-of-range labels as well as sizes.
            if rng.gen_bool(0.3) && lb.len() > 8 {
                let k = rng.gen_range(8..lb.len());
                lb[k] = rng.gen_range(10..=255);
            }
        }
        let (ip, lp) = idx_dir(&dir, &im, &lb, gz);
        let spec = DataSpec {
            dataset: advtrain::data::DatasetName::FashionMnist,
            dir: Some(dir.clone()),
            val_size: 0,
            split_seed: 0,
            train_limit: None,
            test_limit: None,
            crop_padding: 0,
            hflip: false,
        };
        // The reader (any image size) and the data set a model sees (checked against 1x28x28).
        let raw = guarded(|| idx::load_idx_dir(&dir, false, 10));
        let ds = guarded(|| spec.load_test().map(|d| (d.images.size(), d.len())));
        let either = |m: String| {
            if m.contains(&ip.display().to_string()) || m.contains(&lp.display().to_string()) {
                Ok(false)
            } else {
                Err(format!("names neither file: {m}"))
            }
        };
        let outcome = raw.and_then(|r| match r {
            Ok(r) => {
                let ok = r.n > 0
                    && r.labels.len() == r.n
                    && r.pixels.len() == r.n * r.c * r.h * r.w
                    && r.labels.iter().all(|&l| l < 10)
                    && r.validate().is_ok();
                ok.then_some(true)
                    .ok_or_else(|| format!("inconsistent Ok: n {}", r.n))
            }
            Err(e) => either(e.to_string()),
        });
        fails.record("load_idx_dir", seed, outcome);
        let outcome = ds.and_then(|r| match r {
            Ok((size, len)) => (size == [len as i64, 1, 28, 28])
                .then_some(true)
                .ok_or_else(|| {
                    format!("Ok with images {size:?}, the models expect [n, 1, 28, 28]")
                }),
            Err(e) => either(format!("{e:#}")),
        });
        fails.record("DataSpec::load_test", seed, outcome);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    fails.assert_none(cases as usize);
}

/// CIFAR records: `labels` bytes then 3072 pixels.
fn cifar_records(labels: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![];
    for (k, l) in labels.iter().enumerate() {
        v.extend_from_slice(l);
        v.extend((0..3072).map(|j| ((j * 3 + k * 71) % 256) as u8));
    }
    v
}

#[test]
fn cifar_files_load_consistently_or_name_the_file() {
    quiet_panics();
    let tmp = tempfile::tempdir().unwrap();
    let mut fails = Failures::default();
    let cases = 900u64;
    for i in 0..cases {
        let (seed, mut rng) = case_rng("cifar", i);
        let dir = tmp.path().join(format!("c{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        // 0: CIFAR-10 test, 1: CIFAR-10 train (5 files, one mutated), 2/3: CIFAR-100 fine/coarse.
        let kind = rng.gen_range(0..4);
        let k = rng.gen_range(1..=3usize);
        let (files, label_bytes): (Vec<String>, usize) = match kind {
            0 => (vec!["test_batch.bin".into()], 1),
            1 => ((1..=5).map(|b| format!("data_batch_{b}.bin")).collect(), 1),
            _ => (vec!["test.bin".into()], 2),
        };
        let record_len = label_bytes + 3072;
        let victim = rng.gen_range(0..files.len());
        for (f, name) in files.iter().enumerate() {
            let labels: Vec<Vec<u8>> = (0..k)
                .map(|j| (0..label_bytes).map(|b| ((j + b + f) % 10) as u8).collect())
                .collect();
            let refs: Vec<&[u8]> = labels.iter().map(|l| l.as_slice()).collect();
            let mut bytes = cifar_records(&refs);
            if f == victim {
                bytes = match rng.gen_range(0..4) {
                    // A record cut or grown by 1..=record_len bytes.
                    0 => {
                        let d = rng.gen_range(1..=record_len);
                        if rng.gen_bool(0.5) {
                            bytes.truncate(bytes.len().saturating_sub(d));
                        } else {
                            bytes.extend(std::iter::repeat_n(3u8, d));
                        }
                        bytes
                    }
                    // A label byte out of range.
                    1 => {
                        let r = rng.gen_range(0..k);
                        let b = rng.gen_range(0..label_bytes);
                        bytes[r * record_len + b] = rng.gen_range(10..=255);
                        bytes
                    }
                    // An empty file.
                    2 => vec![],
                    _ => mutate_bytes(&mut rng, &bytes),
                };
            }
            write(&dir.join(name), &bytes);
        }
        let r = guarded(|| match kind {
            0 => cifar::load_cifar10_dir(&dir, false),
            1 => cifar::load_cifar10_dir(&dir, true),
            2 => cifar::load_cifar100_dir(&dir, false, false),
            _ => cifar::load_cifar100_dir(&dir, false, true),
        });
        let classes = [10, 10, 100, 20][kind];
        let outcome = r.and_then(|r| match r {
            Ok(im) => {
                let total: usize = files
                    .iter()
                    .map(|f| std::fs::metadata(dir.join(f)).unwrap().len() as usize)
                    .sum();
                let ok = (im.c, im.h, im.w) == (3, 32, 32)
                    && im.pixels.len() == im.n * 3072
                    && im.labels.len() == im.n
                    && im.n * record_len == total
                    && im.labels.iter().all(|&l| (l as usize) < classes)
                    && im.num_classes == classes;
                ok.then_some(true)
                    .ok_or_else(|| format!("inconsistent Ok: n {}", im.n))
            }
            Err(e) => names(&dir.join(&files[victim]), &e.to_string()),
        });
        fails.record("cifar", seed, outcome);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    fails.assert_none(cases as usize);
}

/// Every (dotted key, value) leaf of a TOML tree, tables and arrays included as nodes.
fn toml_paths(v: &toml::Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let toml::Value::Table(t) = v {
        for (k, x) in t {
            prefix.push(k.clone());
            out.push(prefix.clone());
            toml_paths(x, prefix, out);
            prefix.pop();
        }
    }
}

fn toml_node<'a>(root: &'a mut toml::Value, path: &[String]) -> &'a mut toml::Table {
    let mut node = root;
    for p in path {
        node = node.as_table_mut().unwrap().get_mut(p).unwrap();
    }
    node.as_table_mut().unwrap()
}

/// A random TOML value: every type, with the numbers that break validations.
fn random_toml(rng: &mut ChaCha8Rng) -> toml::Value {
    use toml::Value as V;
    let words = [
        "",
        "clean",
        "adv",
        "ns=adv,ap=clean",
        "ns=7,ap=0",
        "pgd-at",
        "trades",
        "linf",
        "l2",
        "cpu",
        "cuda:9",
        "batch",
        "group",
        "two",
        "x=y",
        "\u{1F600}",
    ];
    match rng.gen_range(0..8) {
        0 => V::Integer(
            *[0i64, 1, 2, -1, 3, 7, 100, i64::MAX, i64::MIN, 1 << 40]
                .choose(rng)
                .unwrap(),
        ),
        1 => V::Float(
            *[
                0.0,
                -0.0,
                0.5,
                1.0,
                2.0,
                255.0,
                -1.5,
                1e300,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NAN,
                1e-300,
            ]
            .choose(rng)
            .unwrap(),
        ),
        2 => V::String(words.choose(rng).unwrap().to_string()),
        3 => V::Boolean(rng.gen()),
        4 => V::Array(vec![]),
        5 => V::Array(
            (0..rng.gen_range(1..4))
                .map(|_| V::Integer(rng.gen_range(-1..5)))
                .collect(),
        ),
        6 => V::Table(Default::default()),
        _ => {
            let mut t = toml::Table::new();
            t.insert("ns".into(), V::Integer(rng.gen_range(0..4)));
            t.insert("ap".into(), V::Integer(rng.gen_range(0..4)));
            V::Table(t)
        }
    }
}

/// A mutated recipe: TOML-level edits (values, keys, tables) or text-level ones.
fn mutate_recipe(rng: &mut ChaCha8Rng, text: &str) -> Vec<u8> {
    let tree: toml::Value = toml::from_str(text).unwrap();
    let mut paths = vec![];
    toml_paths(&tree, &mut vec![], &mut paths);
    let mut t = tree.clone();
    let path = paths.choose(rng).unwrap().clone();
    let (parent, key) = path.split_at(path.len() - 1);
    let key = &key[0];
    match rng.gen_range(0..8) {
        0..=2 => {
            toml_node(&mut t, parent).insert(key.clone(), random_toml(rng));
        }
        3 => {
            toml_node(&mut t, parent).remove(key);
        }
        4 => {
            // Renamed (a typo), or another table's key moved here.
            let tb = toml_node(&mut t, parent);
            let v = tb.remove(key).unwrap();
            let other = paths.choose(rng).unwrap().last().unwrap().clone();
            let name = if rng.gen_bool(0.5) {
                format!("{key}s")
            } else {
                other
            };
            tb.insert(name, v);
        }
        5 => {
            let extra = ["bogus", "eps", "steps", "route", "allow_large_eps", "seed"];
            toml_node(&mut t, parent)
                .insert(extra.choose(rng).unwrap().to_string(), random_toml(rng));
        }
        _ => {
            // Text-level: truncation, a flipped byte, a line dropped or repeated.
            let mut b = text.as_bytes().to_vec();
            match rng.gen_range(0..4) {
                0 => b.truncate(rng.gen_range(0..=b.len())),
                1 => {
                    let i = rng.gen_range(0..b.len());
                    b[i] ^= rng.gen_range(1..=255u8);
                }
                _ => {
                    let mut lines: Vec<&str> = text.lines().collect();
                    let i = rng.gen_range(0..lines.len());
                    if rng.gen_bool(0.5) {
                        lines.remove(i);
                    } else {
                        lines.insert(i, lines[i]);
                    }
                    b = lines.join("\n").into_bytes();
                }
            }
            return b;
        }
    }
    match toml::to_string(&t) {
        Ok(s) => s.into_bytes(),
        // A tree the serialiser refuses (e.g. a table after plain values): use the text edit.
        Err(_) => text.as_bytes()[..text.len() / 2].to_vec(),
    }
}

#[test]
fn recipes_load_consistently_or_name_the_file() {
    quiet_panics();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut bases = vec![common::tiny_recipe_toml(&data, 2)];
    for r in [
        "recipes/fmnist-small-cnn-pgd-at.toml",
        "recipes/fmnist/e7-dual-bn.toml",
        "recipes/fmnist/trades.toml",
        "recipes/fmnist/arat.toml",
        "recipes/fmnist/e7-cross-bn.toml",
        "recipes/fmnist/fgsm-rs.toml",
        "recipes/fmnist/mixacm-mixup-kd-acm.toml",
        "recipes/cifar10-preact-resnet18-pgd-at.toml",
    ] {
        bases.push(std::fs::read_to_string(root.join(r)).unwrap());
    }
    let mut fails = Failures::default();
    let cases = 2400u64;
    for i in 0..cases {
        let (seed, mut rng) = case_rng("recipe", i);
        let base = bases.choose(&mut rng).unwrap();
        // One case in four: the valid file with a random `--set key=value` (a key of the
        // recipe, or a mangled one, with a value of any type as TOML text or bare).
        let sets = if rng.gen_bool(0.25) {
            let tree: toml::Value = toml::from_str(base).unwrap();
            let mut paths = vec![];
            toml_paths(&tree, &mut vec![], &mut paths);
            let mut key = paths.choose(&mut rng).unwrap().join(".");
            match rng.gen_range(0..6) {
                0 => key.push_str(".x"),
                1 => key = format!(".{key}"),
                2 => key = key.replace('.', ".."),
                _ => {}
            }
            let value = match rng.gen_range(0..3) {
                0 => random_toml(&mut rng).to_string(),
                1 => ["two", "", "[1,", "{ns = 1}", "1e999", "-", "=", "\\"]
                    .choose(&mut rng)
                    .unwrap()
                    .to_string(),
                _ => random_toml(&mut rng).to_string().replace('"', ""),
            };
            let eq = if rng.gen_bool(0.95) { "=" } else { ":" };
            vec![format!("{key}{eq}{value}")]
        } else {
            vec![]
        };
        let bytes = if sets.is_empty() {
            mutate_recipe(&mut rng, base)
        } else {
            base.as_bytes().to_vec()
        };
        let path = tmp.path().join(format!("c{i}.toml"));
        write(&path, &bytes);
        let outcome = guarded(|| Recipe::load(&path, &sets)).and_then(|r| match r {
            Ok(recipe) => {
                // Consistent: it validates, and its resolved TOML loads back to the same recipe.
                let back = tmp.path().join(format!("c{i}-resolved.toml"));
                let again = guarded(|| {
                    write(&back, recipe.to_toml().as_bytes());
                    Recipe::load(&back, &[])
                });
                let _ = std::fs::remove_file(&back);
                match again {
                    Ok(Ok(r2)) if r2 == recipe && recipe.validate().is_ok() => Ok(true),
                    Ok(Ok(_)) => Err("does not round-trip".into()),
                    Ok(Err(e)) => Err(format!("its resolved recipe fails: {e:#}")),
                    Err(p) => Err(format!("its resolved recipe {p}")),
                }
            }
            // An error names the file, or the --set it comes from.
            Err(e) => {
                let m = format!("{e:#}");
                match sets.first() {
                    Some(set)
                        if m.contains(&format!("--set {set}")) || m.contains(set.as_str()) =>
                    {
                        Ok(false)
                    }
                    _ => names(&path, &m),
                }
            }
        });
        fails.record("recipe", seed, outcome);
        std::fs::remove_file(&path).unwrap();
    }
    fails.assert_none(cases as usize);
}

/// The evaluation a fuzzed state file is read for: standard preset, 12 points, batches of 4.
fn state_key() -> StateKey {
    StateKey {
        preset: "standard".into(),
        norm: advtrain::attack::ThreatNorm::Linf,
        eps: 0.1,
        seed: 0,
        batch_size: 4,
        route: "ns=clean,ap=clean".into(),
        bn_mode: "eval".into(),
        checkpoint_sha256: "ab".repeat(32),
        data_sha256: "cd".repeat(32),
        n: 12,
        batching: Default::default(),
    }
}

/// A state half-way through APGD-T.
fn valid_state() -> State {
    let clean: Vec<bool> = (0..12).map(|i| i % 4 != 0).collect();
    let robust: Vec<bool> = (0..12).map(|i| i % 4 != 0 && i % 3 != 0).collect();
    State {
        key: state_key(),
        clean,
        robust,
        clean_elapsed_s: 0.5,
        done: vec![AttackRecord {
            attack: "apgd-ce".into(),
            robust_accuracy: 6.0 / 12.0,
            elapsed_s: 2.0,
            attacked: 9,
        }],
        current: Some(InProgress {
            attack: 1,
            todo: vec![1, 2, 5, 7, 10, 11],
            batches_done: 1,
            elapsed_s: 1.0,
        }),
        max_perturbation: 0.1,
    }
}

/// What a state that `read_state` accepts must satisfy for `AutoAttack::run` to continue it:
/// flags of length n, robust points clean, records of the preset's attacks in order, an
/// in-progress attack that is the next one, with sorted in-range points and batches.
fn check_state(s: &State, key: &StateKey) -> Result<(), String> {
    let attacks: Vec<String> = key
        .preset
        .parse::<Preset>()
        .unwrap()
        .attacks()
        .iter()
        .map(|a| a.to_string())
        .collect();
    let n = key.n;
    let fin = |v: f64| v.is_finite() && v >= 0.0;
    let mut bad = vec![];
    if s.key != *key {
        bad.push("key differs".to_string());
    }
    if s.clean.len() != n || s.robust.len() != n {
        bad.push("flag lengths".into());
    }
    if s.robust.iter().zip(&s.clean).any(|(&r, &c)| r && !c) {
        bad.push("a robust point that is not clean".into());
    }
    if s.done.len() > attacks.len() {
        bad.push(format!(
            "{} records for {} attacks",
            s.done.len(),
            attacks.len()
        ));
    }
    for (k, r) in s.done.iter().enumerate() {
        if attacks.get(k) != Some(&r.attack) {
            bad.push(format!("record {k} is '{}'", r.attack));
        }
        if !(fin(r.robust_accuracy) && r.robust_accuracy <= 1.0)
            || !fin(r.elapsed_s)
            || r.attacked > n
        {
            bad.push(format!("record {k} values"));
        }
    }
    if let Some(c) = &s.current {
        if c.attack != s.done.len() || c.attack >= attacks.len() {
            bad.push(format!(
                "in-progress attack {} after {} records",
                c.attack,
                s.done.len()
            ));
        }
        if c.todo.windows(2).any(|w| w[0] >= w[1]) || c.todo.iter().any(|&i| i >= n) {
            bad.push("in-progress points unsorted or out of range".into());
        }
        if c.batches_done > c.todo.len().div_ceil(key.batch_size) || !fin(c.elapsed_s) {
            bad.push(format!(
                "{} batches done of {} points",
                c.batches_done,
                c.todo.len()
            ));
        }
    }
    if !fin(s.clean_elapsed_s) || !fin(s.max_perturbation) {
        bad.push("times or max_perturbation".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("Ok with an inconsistent state: {}", bad.join("; ")))
    }
}

/// A random JSON value, with the numbers that break indices and lengths.
fn random_json(rng: &mut ChaCha8Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.gen_range(0..9) {
        0 => json!(null),
        1 => json!(rng.gen::<bool>()),
        2 => json!(*[0u64, 1, 2, 3, 4, 11, 12, 13, 100, u64::MAX]
            .choose(rng)
            .unwrap()),
        3 => json!(*[-1i64, i64::MIN].choose(rng).unwrap()),
        4 => json!(*[0.5f64, -0.5, 1.5, 1e300, -1e300].choose(rng).unwrap()),
        5 => json!(
            *["", "apgd-ce", "apgd-t", "fab-t", "square", "standard", "fast"]
                .choose(rng)
                .unwrap()
        ),
        6 => json!([]),
        7 => json!((0..rng.gen_range(1..15))
            .map(|_| rng.gen_range(0..14))
            .collect::<Vec<_>>()),
        _ => json!({}),
    }
}

/// Paths (object keys / array indices) of every node of a JSON tree.
fn json_paths(v: &serde_json::Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let kids: Vec<(String, &serde_json::Value)> = match v {
        serde_json::Value::Object(o) => o.iter().map(|(k, x)| (k.clone(), x)).collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| (i.to_string(), x))
            .collect(),
        _ => vec![],
    };
    for (k, x) in kids {
        prefix.push(k);
        out.push(prefix.clone());
        json_paths(x, prefix, out);
        prefix.pop();
    }
}

fn json_node<'a>(root: &'a mut serde_json::Value, path: &[String]) -> &'a mut serde_json::Value {
    let mut node = root;
    for p in path {
        node = match node {
            serde_json::Value::Object(o) => o.get_mut(p).unwrap(),
            serde_json::Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    node
}

#[test]
fn autoattack_state_files_are_consistent_or_name_the_file() {
    quiet_panics();
    let tmp = tempfile::tempdir().unwrap();
    let key = state_key();
    let base = serde_json::to_value(valid_state()).unwrap();
    // The unmutated state is accepted as it is.
    let p0 = tmp.path().join("valid.state.json");
    write(&p0, base.to_string().as_bytes());
    let s0 = read_state(&p0, &key).unwrap();
    check_state(&s0, &key).unwrap();
    let mut paths = vec![];
    json_paths(&base, &mut vec![], &mut paths);
    let mut fails = Failures::default();
    let cases = 2400u64;
    for i in 0..cases {
        let (seed, mut rng) = case_rng("state", i);
        let mut v = base.clone();
        let text = match rng.gen_range(0..8) {
            0..=3 => {
                let p = paths.choose(&mut rng).unwrap();
                *json_node(&mut v, p) = random_json(&mut rng);
                v.to_string()
            }
            4 => {
                let p = paths.choose(&mut rng).unwrap();
                let (parent, last) = p.split_at(p.len() - 1);
                match json_node(&mut v, parent) {
                    serde_json::Value::Object(o) => {
                        o.remove(&last[0]);
                    }
                    serde_json::Value::Array(a) => {
                        a.remove(last[0].parse::<usize>().unwrap());
                    }
                    _ => {}
                }
                v.to_string()
            }
            5 => {
                // Arrays grown: an extra flag, record or point.
                let p = paths.choose(&mut rng).unwrap();
                if let serde_json::Value::Array(a) = json_node(&mut v, p) {
                    let extra = a.first().cloned().unwrap_or(serde_json::json!(0));
                    a.push(extra);
                }
                v.to_string()
            }
            _ => String::from_utf8_lossy(&mutate_bytes(&mut rng, v.to_string().as_bytes()))
                .into_owned(),
        };
        let path = tmp.path().join(format!("c{i}.state.json"));
        write(&path, text.as_bytes());
        let outcome = guarded(|| read_state(&path, &key)).and_then(|r| match r {
            Ok(s) => check_state(&s, &key).map(|()| true),
            Err(e) => names(&path, &format!("{e:#}")),
        });
        fails.record("state", seed, outcome);
        std::fs::remove_file(&path).unwrap();
    }
    fails.assert_none(cases as usize);
}

/// An IDX header claiming 2^32 - 1 images of 2^32 - 1 x 2^32 - 1, or 2^32 - 1 images of 28x28,
/// raw or gzipped, is refused without allocating what it claims.
#[test]
fn huge_idx_headers_are_refused_without_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    for (dims, gz) in [
        ([u32::MAX, 28, 28], false),
        ([u32::MAX, 28, 28], true),
        ([u32::MAX, u32::MAX, u32::MAX], false),
        ([u32::MAX, u32::MAX, 1], true),
    ] {
        let raw = idx_bytes(IDX_IMAGES, &dims, &[0; 64]);
        let p = tmp.path().join(format!("huge-{}-{gz}", dims[1]));
        write(&p, &if gz { gzip(&raw) } else { raw });
        let e = idx::read_idx_images(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
    }
}
