//! One module per `rkt` subcommand; each returns the process exit code.

pub mod api_service;
pub mod app;
pub mod cat_manifest;
pub mod cri_service;
pub mod enter;
pub mod fetch;
pub mod gc;
pub mod image;
pub mod list;
pub mod logs;
pub mod metadata_service;
pub mod prepare;
pub mod rm;
pub mod run;
pub mod run_prepared;
pub mod status;
pub mod stop;
pub mod trust;
pub mod version;

use anyhow::Result;

use crate::{Cli, Command};

pub fn dispatch(cli: Cli) -> Result<u8> {
    let global = &cli.global;
    match cli.command {
        Command::Run(args) => run::run(global, *args),
        Command::Prepare(args) => prepare::prepare(global, *args),
        Command::RunPrepared(args) => run_prepared::run_prepared(global, args),
        Command::Stop(args) => stop::stop(global, args),
        Command::Rm(args) => rm::rm(global, args),
        Command::Enter(args) => enter::enter(global, args),
        Command::CatManifest(args) => cat_manifest::cat_manifest(global, args),
        Command::Fetch(args) => fetch::fetch(global, args),
        Command::List(args) => list::list(global, args),
        Command::Status(args) => status::status(global, args),
        Command::Gc(args) => gc::gc(global, args),
        Command::Image(args) => image::image(global, args),
        Command::Logs(args) => logs::logs(global, args),
        Command::MetadataService(args) => metadata_service::metadata_service(args),
        Command::Trust(args) => trust::trust(global, args),
        Command::Version => version::version(),
        Command::App(args) => app::app(global, args),
        Command::ApiService(args) => api_service::api_service(global, args),
        Command::CriService(args) => cri_service::cri_service(global, args),
    }
}

/// Process exit codes are one byte; an app's code is reported modulo 256 as the
/// kernel would, but rkt's own 254 is never faked by a negative value.
pub fn exit_byte(code: i32) -> u8 {
    u8::try_from(code.rem_euclid(256)).unwrap_or(crate::EXIT_RKT_ERROR)
}
