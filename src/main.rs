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

// The executable's entry point (build.rs links it with `--entry=forkhook_entry`): the
// common launches are done before libc starts (`launcher::early`, which says why), and
// the others go on to libc's own entry point, `_start`, with the stack pointer and
// `rdx` (the dynamic loader's finaliser, or 0) as the kernel or the loader left them.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
std::arch::global_asm!(
    ".globl forkhook_entry",
    ".type forkhook_entry, @function",
    "forkhook_entry:",
    "mov r12, rsp",
    "mov r13, rdx",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {early}",
    "mov rsp, r12",
    "mov rdx, r13",
    "jmp _start",
    early = sym early_launch,
);

/// Called by `forkhook_entry` with the kernel's initial stack.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
extern "C" fn early_launch(stack_pointer: *const usize) {
    // SAFETY: forkhook_entry passes the stack pointer the process started with.
    let stack = unsafe { forkhook::sys::early::InitialStack::at(stack_pointer) };
    launcher::early::launch(&stack, LIBRARY.len(), LIBRARY_HASH.as_bytes());
}
