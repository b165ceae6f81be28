//! The `deja` command line.
fn main() {}
