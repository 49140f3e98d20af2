//! `rkt version`: what this build is and which backends can run here.

use anyhow::Result;
use rkt_engine::stage::registry::{self, Registered};
use rkt_engine::stage::{Availability, ImageFinder, Labeler, Networker, Stage1};

pub fn version() -> Result<u8> {
    println!("rkt Version: {}", env!("CARGO_PKG_VERSION"));
    println!("appc Version: {}", rkt_engine::schema::AC_VERSION);
    println!("Features: -TPM +SDJOURNAL=no +OVERLAY");
    println!("stage1 backends:");
    for stage1 in registry::all::<dyn Stage1>()? {
        let available = match stage1.availability() {
            Availability::Available => "available".to_string(),
            Availability::Unavailable(why) => format!("unavailable: {why}"),
        };
        println!("  {:<8} {available}", stage1.name());
    }
    print_names::<dyn ImageFinder>("image sources")?;
    print_names::<dyn Networker>("networkers")?;
    print_names::<dyn Labeler>("labelers")?;
    Ok(0)
}

fn print_names<T: Registered + ?Sized>(title: &str) -> Result<()> {
    println!("{title}: {}", registry::names::<T>()?.join(", "));
    Ok(())
}
