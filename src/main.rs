fn main() {
    // Exit quietly when stdout is closed early (`quantfit plan | head`) instead of panicking
    // on the write error, as command-line tools are expected to.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Interrupted runs remove their partial outputs; a mapped input that shrinks underneath is
    // an error, not a crash (src/output/guard.rs). Before any other thread starts.
    quantfit::output::guard::install();
    // A panic that still escapes (a bug, or stdout/stderr that cannot be written: a full disk,
    // a closed terminal) ends the run with one error line and exit 2, its partial outputs
    // removed, instead of a backtrace and exit 101.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        quantfit::output::guard::remove_temps();
        let line = if msg.starts_with("failed printing to std") {
            format!("error: cannot write to standard output or error ({msg})\n")
        } else {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            format!(
                "error: internal error{at}: {} (please report)\n",
                msg.replace('\n', " ")
            )
        };
        use std::io::Write;
        let _ = std::io::stderr().write_all(line.as_bytes());
        std::process::exit(2);
    }));
    std::process::exit(quantfit::cli::run());
}
