fn main() {
    // Exit quietly when stdout is closed early (`quantfit plan | head`) instead of panicking
    // on the write error, as command-line tools are expected to.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(quantfit::cli::run());
}
