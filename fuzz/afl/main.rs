//! `cluster-fuzz-afl TARGET`: runs one fuzz target of `cluster_fuzz` under
//! AFL++ (persistent mode). See `cargo xtask fuzz`.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = cluster_fuzz::target(&name) else {
        let names: Vec<&str> = cluster_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: cluster-fuzz-afl TARGET (one of {names:?})");
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
