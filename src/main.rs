fn main() {
    if let Err(e) = signpost::cli::run() {
        eprintln!("signpost: {e:#}");
        std::process::exit(1);
    }
}
