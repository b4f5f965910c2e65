//! Import a foreign (PyTorch-trained) safetensors state dict into a [`Network`].
//!
//! Key resolution, per file key: strip every leading `module.` (DataParallel), take the name
//! as is when the model has it, else try the [`ALIASES`] (one dot-separated segment renamed,
//! e.g. RobustBench's `linear` for our `fc`, kuangliu's `shortcut` for torchvision's
//! `downsample`). `num_batches_tracked` buffers are ignored on both sides (ours keep their
//! value). Then the file must cover exactly our key set with our shapes; errors name the
//! file, the tensors and the expected vs found shapes, and list missing/unexpected keys.

use crate::checkpoint;
use crate::nn::{ArchSpec, Network};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tch::{Device, Tensor};

/// Segment renames tried when a stripped file key is not one of ours: (file segment, ours).
pub const ALIASES: &[(&str, &str)] = &[
    // classifier: RobustBench/kuangliu PreActResNet and ResNet call it `linear`, ours `fc`
    ("linear", "fc"),
    ("fc", "linear"),
    // CIFAR (kuangliu/RobustBench) ResNet projection shortcut vs torchvision `downsample`
    ("shortcut", "downsample"),
    ("downsample", "shortcut"),
];

const NBT: &str = "num_batches_tracked";

/// `name` without its leading `module.` prefixes.
pub fn strip_module(name: &str) -> &str {
    let mut s = name;
    while let Some(rest) = s.strip_prefix("module.") {
        s = rest;
    }
    s
}

/// Our name for the file key `foreign`: exact (after stripping `module.`), else the first alias
/// (one segment renamed) that `ours` holds; None when nothing matches.
pub fn map_key(foreign: &str, ours: &HashSet<String>) -> Option<String> {
    let name = strip_module(foreign);
    if ours.contains(name) {
        return Some(name.to_string());
    }
    let segs: Vec<&str> = name.split('.').collect();
    for (i, s) in segs.iter().enumerate() {
        for &(from, to) in ALIASES {
            if *s == from {
                let mut cand = segs.clone();
                cand[i] = to;
                let cand = cand.join(".");
                if ours.contains(&cand) {
                    return Some(cand);
                }
            }
        }
    }
    None
}

fn is_nbt(name: &str) -> bool {
    name == NBT || name.ends_with(&format!(".{NBT}"))
}

fn preview(v: &[String]) -> String {
    let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 5 {
        s.push_str(&format!(", ... ({} more)", v.len() - 5));
    }
    s
}

/// Rename the file tensors `src` to our names (`ours`: our variables), strictly: every one of
/// our tensors present once with our shape, nothing unexpected (`num_batches_tracked` is
/// ignored on both sides).
pub fn map_state_dict(
    src: HashMap<String, Tensor>,
    ours: &HashMap<String, Tensor>,
    file: &Path,
) -> Result<HashMap<String, Tensor>> {
    let names: HashSet<String> = ours.keys().cloned().collect();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let mut origin: HashMap<String, String> = HashMap::new();
    let mut unexpected = vec![];
    let mut problems = vec![];
    let mut keys: Vec<String> = src.keys().cloned().collect();
    keys.sort_unstable();
    let mut src = src;
    for k in keys {
        let t = src.remove(&k).expect("key listed");
        if is_nbt(&k) {
            continue;
        }
        match map_key(&k, &names) {
            Some(n) => {
                if let Some(prev) = origin.get(&n) {
                    problems.push(format!("file keys '{prev}' and '{k}' both map to '{n}'"));
                    continue;
                }
                let want = ours[&n].size();
                if t.size() != want {
                    let from = if k == n {
                        String::new()
                    } else {
                        format!(" (file key '{k}')")
                    };
                    problems.push(format!(
                        "tensor '{n}'{from}: expected shape {want:?}, found {:?}",
                        t.size()
                    ));
                }
                origin.insert(n.clone(), k);
                out.insert(n, t);
            }
            None => unexpected.push(k),
        }
    }
    let mut missing: Vec<String> = names
        .iter()
        .filter(|n| !out.contains_key(*n) && !is_nbt(n))
        .cloned()
        .collect();
    missing.sort_unstable();
    if !(missing.is_empty() && unexpected.is_empty() && problems.is_empty()) {
        let mut parts = problems.iter().take(5).cloned().collect::<Vec<_>>();
        if problems.len() > 5 {
            parts.push(format!("... ({} more problems)", problems.len() - 5));
        }
        if !missing.is_empty() {
            parts.push(format!("{} missing [{}]", missing.len(), preview(&missing)));
        }
        if !unexpected.is_empty() {
            parts.push(format!(
                "{} unexpected [{}]",
                unexpected.len(),
                preview(&unexpected)
            ));
        }
        anyhow::bail!(
            "{} does not match the architecture: {}",
            file.display(),
            parts.join("; ")
        );
    }
    Ok(out)
}

/// Copy a foreign safetensors state dict into `net`'s variables (see the module doc).
pub fn import_into(net: &Network, file: &Path) -> Result<()> {
    let src = checkpoint::read_tensors(file)?;
    let ours = net.variables();
    let mapped = map_state_dict(src, &ours, file)?;
    tch::no_grad(|| {
        for (n, t) in &mapped {
            let mut dst = ours[n].shallow_clone();
            let v = t.f_to_device(dst.device())?.f_to_kind(dst.kind())?;
            dst.f_copy_(&v)?;
        }
        Ok::<_, tch::TchError>(())
    })
    .with_context(|| format!("cannot copy the tensors of {}", file.display()))?;
    Ok(())
}

/// A fresh network of `arch` on `device` holding the weights of the foreign file `file`.
pub fn load_foreign(file: &Path, arch: &ArchSpec, device: Device) -> Result<Network> {
    let net = Network::new(arch, device)
        .with_context(|| format!("cannot build '{}' to load {}", arch.name, file.display()))?;
    import_into(&net, file)?;
    Ok(net)
}

/// Python that converts a pickled PyTorch file to safetensors (shown when one is refused).
pub const PICKLE_HINT: &str = "convert it to safetensors in Python:\n    \
    import torch; from safetensors.torch import save_file\n    \
    sd = torch.load('model.pt', map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd)\n    \
    save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')";

/// Error when `file` is a pickled PyTorch file (`torch.save`: a `.pt`/`.pth`/`.pkl`/`.bin`
/// name, or a zip or pickle header): advtrain never loads pickles (unpickling can run code).
/// `flag` names the option it came from.
pub fn refuse_pickle(file: &Path, flag: &str) -> Result<()> {
    let ext = file
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut head = [0u8; 4];
    let magic = std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && (head == *b"PK\x03\x04" || head[0] == 0x80);
    if matches!(ext.as_str(), "pt" | "pth" | "pkl" | "bin" | "ckpt") || magic {
        anyhow::bail!(
            "{flag} {}: this is a PyTorch pickle (torch.save), which advtrain never loads \
             (unpickling can run code); {PICKLE_HINT}\nthen pass {flag} model.safetensors \
             (a TorchScript module saved with torch.jit.save loads with --torchscript instead)",
            file.display()
        );
    }
    Ok(())
}
