fn main() {
    std::process::exit(quantfit::cli::run());
}
