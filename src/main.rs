/// mimalloc instead of the system allocator: a request allocates many small JSON values across
/// the HTTP workers and the blocking pool, where glibc's malloc spent a sixth of the time
/// (about 10 % less CPU per referral). Built without transparent huge pages (`no_thp`), which
/// took peak RSS from about 110 MB to 175 MB under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = signpost::cli::run() {
        eprintln!("signpost: {e:#}");
        std::process::exit(1);
    }
}
