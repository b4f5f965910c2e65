//! Link the whole of libtorch (CPU + CUDA) and embed an rpath to it.
//!
//! A plain tch build links only `libtorch_cpu` because the linker drops `libtorch_cuda`
//! (tch-rs issue 980), so CUDA would never be available. We force `-ltorch` with
//! `--no-as-needed` and embed the library directory as rpath, so the binary needs no
//! `LD_LIBRARY_PATH` and uses CUDA when a GPU is present.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
