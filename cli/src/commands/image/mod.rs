//! `rkt image ...`: the image store from the command line. Every IMAGE argument is
//! resolved as rkt does (`Store::resolve`): a full or short image ID, or a label
//! query `name[:version][,label=value...]`.

mod cat_manifest;
mod gc;
mod list;
mod output;
mod rm;
mod verify;

use anyhow::Result;
use clap::{Args, Subcommand};
use rkt_engine::runner::Runtime;
use rkt_engine::schema::ImageId;

use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images in the local store
    List(list::ListArgs),
    /// Remove one or more images with the given IDs or image names from the local store
    Rm(rm::RmArgs),
    /// Inspect and print the image manifest
    CatManifest(cat_manifest::CatManifestArgs),
    /// Export a stored image to an ACI file
    Export(output::ExportArgs),
    /// Extract a stored image to a directory
    Extract(output::ExtractArgs),
    /// Render a stored image to a directory with all its dependencies
    Render(output::ExtractArgs),
    /// Garbage collect the local store
    Gc(gc::GcArgs),
    /// Re-hash stored images and rendered trees; report any damage
    Verify(verify::VerifyArgs),
}

impl ImageArgs {
    /// For error messages: `image rm: ...`.
    pub fn name(&self) -> &'static str {
        match self.command {
            ImageCommand::List(_) => "image list",
            ImageCommand::Rm(_) => "image rm",
            ImageCommand::CatManifest(_) => "image cat-manifest",
            ImageCommand::Export(_) => "image export",
            ImageCommand::Extract(_) => "image extract",
            ImageCommand::Render(_) => "image render",
            ImageCommand::Gc(_) => "image gc",
            ImageCommand::Verify(_) => "image verify",
        }
    }
}

pub fn image(global: &GlobalFlags, args: ImageArgs) -> Result<u8> {
    match args.command {
        ImageCommand::List(a) => list::list(global, a),
        ImageCommand::Rm(a) => rm::rm(global, a),
        ImageCommand::CatManifest(a) => cat_manifest::cat_manifest(global, a),
        ImageCommand::Export(a) => output::export(global, a),
        ImageCommand::Extract(a) => output::extract(global, a, output::Kind::Extract),
        ImageCommand::Render(a) => output::extract(global, a, output::Kind::Render),
        ImageCommand::Gc(a) => gc::gc(global, a),
        ImageCommand::Verify(a) => verify::verify(global, a),
    }
}

/// The image `reference` names in the store; never fetches. The store's errors
/// already name the reference.
fn resolve(runtime: &Runtime, reference: &str) -> Result<ImageId> {
    Ok(runtime.store.resolve(reference)?)
}
