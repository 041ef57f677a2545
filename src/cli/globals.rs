//! Which global flags each command takes. A global flag given to a command
//! it does nothing for is refused, with what it applies to: no flag is ever
//! accepted and silently ignored. (`--config`, `--repo` and `-v` apply to
//! every command that reads a config, a repository or logs.)

use super::{Cli, Command, RemoteAction};

/// What a command does that a global flag can change.
#[derive(Debug, Default, Clone, Copy)]
struct Uses {
    /// Sends data to a remote or a cloud (`--limit-upload`).
    upload: bool,
    /// Fetches data from a remote (`--limit-download`).
    download: bool,
    /// Talks to a remote at all (`--io-timeout`, `--insecure-http`).
    remote: bool,
    /// Has a machine-readable result (`--json`).
    json: bool,
    /// Serves (`--insecure-http`: plain HTTP off loopback).
    serves: bool,
}

const ALL: Uses = Uses {
    upload: true,
    download: true,
    remote: true,
    json: true,
    serves: false,
};
const LOCAL: Uses = Uses {
    upload: false,
    download: false,
    remote: false,
    json: true,
    serves: false,
};
const READS_REMOTE: Uses = Uses {
    upload: false,
    download: true,
    remote: true,
    json: true,
    serves: false,
};

fn uses(cmd: Option<&Command>) -> Uses {
    let console = Uses { json: false, ..ALL };
    let maybe_remote = |r: bool, u: Uses| if r { u } else { LOCAL };
    match cmd {
        None | Some(Command::Tui) => console,
        Some(Command::Demo { no_tui, .. }) => {
            if *no_tui {
                Uses::default()
            } else {
                console
            }
        }
        Some(Command::Completions { .. }) | Some(Command::Man { .. }) => Uses::default(),
        Some(Command::Init { .. })
        | Some(Command::Backup { .. })
        | Some(Command::Ls)
        | Some(Command::Timeline { .. })
        | Some(Command::Show { .. })
        | Some(Command::Hash { .. })
        | Some(Command::Diff { .. })
        | Some(Command::Drills { .. })
        | Some(Command::Vms { .. })
        | Some(Command::Runs { .. })
        | Some(Command::Key { .. }) => LOCAL,
        Some(Command::Verify { remote, .. }) => maybe_remote(remote.is_some(), READS_REMOTE),
        Some(Command::Restore { from, .. })
        | Some(Command::Nbd { from, .. })
        | Some(Command::Files { from, .. }) => maybe_remote(from.is_some(), READS_REMOTE),
        // A drill's default source may be a remote (the VM's config).
        Some(Command::Drill(_)) => READS_REMOTE,
        // Cloud checks move no data; a cloud restore fetches (from a
        // remote) and uploads (into the cloud); an export uploads to S3.
        Some(Command::Cloud { .. }) => LOCAL,
        Some(Command::CloudRestore(a)) => Uses {
            download: a.from.is_some(),
            ..ALL
        },
        Some(Command::Export(a)) => Uses {
            download: a.from.is_some(),
            ..ALL
        },
        // The flags given with `remote add` become the remote's settings.
        Some(Command::Remote {
            action: RemoteAction::Add(_),
        }) => ALL,
        Some(Command::Remote {
            action: RemoteAction::Ls,
        }) => Uses {
            upload: false,
            download: false,
            ..ALL
        },
        Some(Command::Remote {
            action: RemoteAction::Rm { .. },
        }) => LOCAL,
        Some(Command::Serve(_)) => Uses {
            serves: true,
            ..LOCAL
        },
        Some(Command::Push(_)) => Uses {
            download: false,
            ..ALL
        },
        Some(Command::Pull(_)) => READS_REMOTE,
        Some(Command::Prune(a)) => metadata_only(a.remote.is_some()),
        Some(Command::Gc(a)) => metadata_only(a.remote.is_some()),
        Some(Command::Protect(a)) | Some(Command::Unprotect(a)) => {
            metadata_only(a.remote.is_some())
        }
        Some(Command::Locks { remote, .. }) => metadata_only(remote.is_some()),
        Some(Command::Plans { from, .. }) => metadata_only(from.is_some()),
        Some(Command::Status { .. }) => Uses {
            upload: false,
            download: false,
            ..ALL
        },
        // Pushes to the policies' remotes.
        Some(Command::Daemon(_)) => Uses {
            download: false,
            ..ALL
        },
    }
}

/// A command that only lists, reads or deletes small things on a remote:
/// bandwidth limits do not apply, timeouts do.
fn metadata_only(remote: bool) -> Uses {
    Uses { remote, ..LOCAL }
}

pub fn check(cli: &Cli) -> anyhow::Result<()> {
    let u = uses(cli.command.as_ref());
    let name = command_name(cli);
    let flags = [
        (
            cli.limit_upload.is_some(),
            "--limit-upload",
            u.upload,
            "commands that send backups to a remote or a cloud (push, daemon, cloud-restore, export, remote add, the console)",
        ),
        (
            cli.limit_download.is_some(),
            "--limit-download",
            u.download,
            "commands that fetch backups from a remote (pull, restore --from, verify --remote, drill, cloud-restore --from, export --from, remote add, the console)",
        ),
        (
            cli.limit_burst.is_some(),
            "--limit-burst",
            u.upload || u.download,
            "commands that take --limit-upload or --limit-download",
        ),
        (
            cli.io_timeout.is_some(),
            "--io-timeout",
            u.remote,
            "commands that talk to a remote",
        ),
        (
            cli.insecure_http,
            "--insecure-http",
            u.remote || u.serves,
            "serve, and commands that talk to a remote",
        ),
        (
            cli.json,
            "--json",
            u.json,
            "commands with a result to print (not the console, completions or man)",
        ),
    ];
    for (given, flag, applies, which) in flags {
        if given && !applies {
            anyhow::bail!(
                "{flag} does nothing for `lifeboat {name}`: it applies to {which}; leave it out"
            );
        }
    }
    if let Some(Command::Serve(a)) = &cli.command {
        if a.tls && cli.insecure_http {
            anyhow::bail!("--tls and --insecure-http contradict each other: give one");
        }
    }
    Ok(())
}

fn command_name(cli: &Cli) -> String {
    use clap::CommandFactory;
    let args: Vec<String> = std::env::args().collect();
    let top = Cli::command();
    // The first argument that names a subcommand (flags may come first).
    args.iter()
        .skip(1)
        .find(|a| top.get_subcommands().any(|s| s.get_name() == a.as_str()))
        .cloned()
        .unwrap_or_else(|| {
            if cli.command.is_none() {
                "(the console)".into()
            } else {
                "this command".into()
            }
        })
}
