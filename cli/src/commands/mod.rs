//! One module per `rkt` subcommand; each returns the process exit code.

pub mod fetch;
pub mod gc;
pub mod list;
pub mod logs;
pub mod run;
pub mod status;
pub mod version;

use anyhow::Result;

use crate::{Cli, Command};

pub fn dispatch(cli: Cli) -> Result<u8> {
    let global = &cli.global;
    match cli.command {
        Command::Run(args) => run::run(global, *args),
        Command::Fetch(args) => fetch::fetch(global, args),
        Command::List(args) => list::list(global, args),
        Command::Status(args) => status::status(global, args),
        Command::Gc(args) => gc::gc(global, args),
        Command::Logs(args) => logs::logs(global, args),
        Command::Version => version::version(),
    }
}

/// Process exit codes are one byte; an app's code is reported modulo 256 as the
/// kernel would, but rkt's own 254 is never faked by a negative value.
pub fn exit_byte(code: i32) -> u8 {
    u8::try_from(code.rem_euclid(256)).unwrap_or(crate::EXIT_RKT_ERROR)
}
