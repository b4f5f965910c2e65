fn main() {
    if let Err(e) = advtrain::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
