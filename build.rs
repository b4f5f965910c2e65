//! Link the whole of libtorch (CPU + CUDA) and embed an rpath to it; compile the autocast shim.
//!
//! A plain tch build links only `libtorch_cpu` because the linker drops `libtorch_cuda`
//! (tch-rs issue 980), so CUDA would never be available. We force `-ltorch` with
//! `--no-as-needed` and embed the library directory as rpath, so the binary needs no
//! `LD_LIBRARY_PATH` and uses CUDA when a GPU is present.
//!
//! `src/shim/autocast.cpp` exposes CPU/CUDA autocast with a chosen dtype (tch 0.24 exposes only
//! CUDA autocast without a dtype); it is compiled against the headers next to that library.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=src/shim/autocast.cpp");
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
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("advtrain_shim");
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-lib=dylib=c10");
}
