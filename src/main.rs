fn main() {
    if let Err(e) = advtrain::cli::main() {
        eprintln!("error: {e:#}");
        let code = e
            .downcast_ref::<advtrain::interrupt::Interrupted>()
            .map_or(1, |i| 128 + i.signal);
        std::process::exit(code);
    }
}
