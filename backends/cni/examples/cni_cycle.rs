//! One netns + ptp ADD + DEL cycle through our client, for the side-by-side
//! measurement against a shell script driving the same plugin
//! (`cni_cycle CONTAINER_ID`; as root).

fn main() {
    let id = std::env::args().nth(1).unwrap_or_else(|| "rkt-bench".into());
    let Some(mut network) = rkt_backend_cni::builtin_network("default") else {
        eprintln!("no built-in default network");
        std::process::exit(1);
    };
    // ptp (with host-local and ipMasq) alone, as the script runs it.
    network.plugins.truncate(1);
    if let Err(e) = rkt_backend_cni::bench_cycle(&id, network) {
        eprintln!("cni_cycle: {e}");
        std::process::exit(1);
    }
}
