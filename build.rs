//! Link the whole of libtorch (CPU + CUDA) and embed an rpath to it; compile the autocast shim.
//!
//! A plain tch build links only `libtorch_cpu` because the linker drops `libtorch_cuda`
//! (tch-rs issue 980), so CUDA would never be available. We force `-ltorch` with
//! `--no-as-needed` and embed the library directory as rpath, so the binary needs no
//! `LD_LIBRARY_PATH` and uses CUDA when a GPU is present.
//!
//! `src/shim/optim.cpp` is SGD's update over all parameters with ATen's foreach ops.
//!
//! `src/shim/autocast.cpp` exposes CPU/CUDA autocast with a chosen dtype (tch 0.24 exposes only
//! CUDA autocast without a dtype); it is compiled against the headers next to that library.
//!
//! `src/shim/dist.cpp` is the torch.distributed (c10d) shim: TCPStore + ProcessGroupGloo, whose
//! headers the wheel ships except gloo's own (Debian's `libgloo-dev`, `/usr/include/gloo`).
//! ProcessGroupNCCL is compiled in (`ADVTRAIN_NCCL`) when the wheel's `nvidia/nccl` and
//! `nvidia/cu*` headers and `libtorch_cuda.so` are present, unless `ADVTRAIN_NO_NCCL` is set.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=src/shim/autocast.cpp");
    println!("cargo:rerun-if-changed=src/shim/optim.cpp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("DEP_TCH_LIBTORCH_LIB is not set: torch-sys must be a direct dependency");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    let root = PathBuf::from(&lib)
        .parent()
        .expect("libtorch lib dir has a parent")
        .to_path_buf();
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .file("src/shim/autocast.cpp")
        .file("src/shim/optim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("advtrain_shim");
    dist_shim(&lib, &root, &include);
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// Compile `src/shim/dist.cpp` (Gloo always; NCCL when its headers are found).
fn dist_shim(lib: &str, torch: &Path, include: &Path) {
    println!("cargo:rerun-if-changed=src/shim/dist.cpp");
    println!("cargo:rerun-if-env-changed=ADVTRAIN_NO_NCCL");
    let gloo = [
        "/usr/include/gloo/config.h",
        "/usr/local/include/gloo/config.h",
    ];
    if !gloo.iter().any(|p| Path::new(p).exists()) {
        panic!(
            "gloo headers not found (/usr/include/gloo): install Debian's libgloo-dev \
             (`apt-get install libgloo-dev`, done by scripts/setup)"
        );
    }
    let mut b = cc::Build::new();
    b.cpp(true)
        .file("src/shim/dist.cpp")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false);
    // site-packages/torch -> site-packages/nvidia/{nccl,cu13,cu12}/include
    let nvidia = torch.parent().map(|p| p.join("nvidia"));
    let nccl = nvidia.as_ref().map(|n| n.join("nccl/include"));
    // The CUDA runtime headers with their `crt/` part (the wheel's nvidia/cu13 lacks it; a
    // CUDA toolkit under CUDA_HOME or /usr/local/cuda has it).
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut dirs: Vec<PathBuf> = vec![];
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(h).join("include"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    if let Some(n) = &nvidia {
        dirs.extend(["cu13", "cu12"].iter().map(|c| n.join(c).join("include")));
    }
    let cuda = dirs
        .into_iter()
        .find(|p| p.join("cuda_runtime_api.h").exists() && p.join("crt/host_config.h").exists());
    let torch_cuda = Path::new(lib).join("libtorch_cuda.so");
    match (nccl, cuda) {
        (Some(nccl), Some(cuda))
            if std::env::var_os("ADVTRAIN_NO_NCCL").is_none()
                && nccl.join("nccl.h").exists()
                && torch_cuda.exists() =>
        {
            b.include(nccl)
                .include(cuda)
                .define("USE_C10D_NCCL", None)
                .define("USE_CUDA", None)
                .define("ADVTRAIN_NCCL", None);
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-cfg=advtrain_nccl");
        }
        _ => println!(
            "cargo:warning=advtrain: NCCL or full CUDA headers (crt/host_config.h) not found: \
             building the distributed shim with Gloo only (set CUDA_HOME to a CUDA toolkit)"
        ),
    }
    println!("cargo:rustc-check-cfg=cfg(advtrain_nccl)");
    b.compile("advtrain_dist");
}
