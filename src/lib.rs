//! The lifeboat application: the CLI, the console and the `lifeboat
//! serve` repository server (whole-flow tests run it in-process on
//! loopback). The engine is the `lifeboat_core` crate. All of it lives in
//! the library and the binary only calls `main`: cargo compiles a library
//! while its dependency's code generation still runs, a binary only after,
//! so this shortens a cold build by the length of one crate.

pub mod cli;
pub mod logging;
pub mod output;
pub mod server;
pub mod tui;

use clap::Parser;

/// The binary's `main`: parse the arguments, set up logging and the
/// runtime, dispatch.
pub fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    // The console must never print over its screen: its log goes to the
    // Log pane and a file instead of stderr.
    let sink = if args.opens_console() {
        // The console lives for hours and allocates on several threads
        // (refreshes, jobs): two malloc arenas keep freed memory reusable
        // instead of spread over one arena per thread that ever allocated.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets an allocator parameter, before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        let sink =
            logging::LogSink::new(Some(lifeboat_core::config::data_dir().join("lifeboat.log")));
        cli::init_tracing_to(args.verbose, sink.clone());
        Some(sink)
    } else {
        cli::init_tracing(args.verbose, args.json);
        None
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = rt.block_on(cli::run(args, sink));
    std::process::ExitCode::from(code)
}
