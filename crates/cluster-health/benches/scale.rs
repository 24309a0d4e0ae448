//! Scale benchmark (being written).
fn main() {}
