//! `rkt image rm`: each image resolved and reported; one failure does not stop the
//! others, and makes the exit code 254.

use anyhow::Result;
use clap::Args;
use rkt_engine::image_gc;
use rkt_engine::schema::ImageId;

use crate::flags::GlobalFlags;

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

pub fn rm(global: &GlobalFlags, args: RmArgs) -> Result<u8> {
    let runtime = global.runtime()?;
    let mut failed = 0usize;
    let mut ids: Vec<ImageId> = Vec::new();
    for reference in &args.images {
        match super::resolve(&runtime, reference) {
            Ok(id) if !ids.contains(&id) => ids.push(id),
            Ok(_) => {}
            Err(e) => {
                eprintln!("image rm: {}", crate::one_line(&e));
                failed += 1;
            }
        }
    }
    let mut done = 0usize;
    if !ids.is_empty() {
        for (id, result) in ids
            .iter()
            .zip(image_gc::remove_images(&runtime.store, &runtime.pods, &ids)?)
        {
            match result {
                Ok(removed) => {
                    println!(
                        "successfully removed aci for image: {:?} ({:?})",
                        removed.id.as_str(),
                        removed.name
                    );
                    for tree in &removed.trees_kept {
                        eprintln!(
                            "image rm: kept tree {tree}: a pod still uses it (image gc removes it once none does)"
                        );
                    }
                    done += 1;
                }
                Err(e) => {
                    eprintln!("image rm: error removing image {id}: {e}");
                    failed += 1;
                }
            }
        }
    }
    if done > 0 {
        eprintln!("{done} image(s) successfully removed");
    }
    if failed > 0 {
        // With one image, its own line already is the one-line error.
        if args.images.len() > 1 {
            eprintln!("image rm: {failed} image(s) cannot be removed");
        }
        return Ok(crate::EXIT_RKT_ERROR);
    }
    Ok(0)
}
