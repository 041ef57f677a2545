//! The lifeboat binary: everything is in the library (`lifeboat::main`).

fn main() -> std::process::ExitCode {
    lifeboat::main()
}
