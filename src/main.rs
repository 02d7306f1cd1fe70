//! `forkhook [OPTIONS] -- COMMAND [ARGS]...`: see `forkhook --help`.

use forkhook::launcher::{self, Cli};

/// libforkhook.so, built from hook/ by build.rs.
static LIBRARY: &[u8] = include_bytes!(env!("FORKHOOK_EMBEDDED_LIBRARY"));
/// Its xxh3 hash, which names the cached copy.
const LIBRARY_HASH: &str = env!("FORKHOOK_EMBEDDED_HASH");

fn main() {
    let cli = Cli::parse();
    if let Err(error) = launcher::main(cli, LIBRARY, LIBRARY_HASH) {
        eprintln!("forkhook: {error}");
        std::process::exit(error.exit_code());
    }
}
