//! `rkt image verify`: rkt checked the named images' rendered trees; this also
//! re-hashes their blobs, and with no IMAGE checks the whole store. Any damage is
//! reported, one line each, and makes the exit code 254.

use anyhow::Result;
use clap::Args;

use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Images to check (default: every image and tree in the store)
    #[arg(value_name = "IMAGE")]
    pub images: Vec<String>,
}

pub fn verify(global: &GlobalFlags, args: VerifyArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let mut damaged = false;
    if args.images.is_empty() {
        let report = runtime.store.verify()?;
        for problem in &report.problems {
            eprintln!("image verify: {problem}");
        }
        damaged = !report.is_ok();
        println!(
            "verified {} image(s) and {} tree(s): {}",
            report.images_checked,
            report.trees_checked,
            if damaged {
                format!("{} problem(s)", report.problems.len())
            } else {
                "no damage found".to_string()
            }
        );
    }
    for reference in &args.images {
        let id = match super::resolve(&runtime, reference) {
            Ok(id) => id,
            Err(e) => {
                eprintln!("image verify: {}", crate::one_line(&e));
                damaged = true;
                continue;
            }
        };
        let report = runtime.store.verify_images(std::slice::from_ref(&id))?;
        if report.is_ok() {
            println!(
                "successfully verified checksum for image: {reference:?} ({:?})",
                id.as_str()
            );
        } else {
            for problem in &report.problems {
                eprintln!("image verify: {problem}");
            }
            damaged = true;
        }
    }
    Ok(if damaged { crate::EXIT_RKT_ERROR } else { 0 })
}
